"""cdra_plugin.eval.metrics against hand-worked tables: PrefEval's rules (Eq. 5), Acc_DA as a max (Eq. 4), nulls
excluded only where they could change a value, intervals over prompts, paired differences on shared ids (the
intervals' coverage is simulated in test_eval_intervals.py)."""

import random

import pytest

from cdra_plugin.eval.metrics import METRICS, best_run, compare, indicator, paired_difference, summarize

T, F, N = True, False, None


def pf(ack, hal, vio, helpful):
    return {"acknowledge": ack, "hallucination": hal, "violation": vio, "helpful": helpful}


# (acknowledge, hallucination, violation, helpful) -> (e_puv, e_hp, e_ir, e_ur, acc_pf), worked out by hand from
# PrefEval's rules; hallucination is None where acknowledge is No (not asked).
PF_TABLE = [
    (pf(F, N, F, T), (0, 0, 0, 0, 1)),  # nothing wrong
    (pf(F, N, T, T), (1, 0, 0, 0, 0)),  # violates without acknowledging: preference-unaware violation
    (pf(F, N, T, F), (0, 0, 0, 1, 0)),  # an unhelpful response is only unhelpful
    (pf(T, T, F, T), (0, 0, 0, 0, 1)),  # restates the preference loosely but follows it and helps: no error
    (pf(T, T, T, T), (0, 1, 0, 0, 0)),  # restates it wrongly and violates it: hallucination-of-preference violation
    (pf(T, F, T, T), (0, 0, 1, 0, 0)),  # acknowledges the right preference, violates it anyway: inconsistent
    (pf(T, F, T, F), (0, 0, 0, 1, 0)),  # ... but unhelpful: not inconsistent
    (pf(T, F, F, T), (0, 0, 0, 0, 1)),  # acknowledges and follows
    (pf(T, T, T, F), (0, 0, 0, 1, 0)),  # hallucinated and violated, but unhelpful: only unhelpful
    # nulls: a value is given only when no completion of the nulls could change it
    (pf(T, N, F, T), (0, 0, 0, 0, 1)),  # hallucination failed, but without a violation no error needs it
    (pf(N, N, F, T), (0, 0, 0, 0, 1)),  # acknowledge failed: likewise settled by "no violation, helpful"
    (pf(T, N, T, T), (0, N, N, 0, 0)),  # hallucination failed and decides which error, not whether one
    (pf(F, N, N, F), (0, 0, 0, 1, 0)),  # violation failed, but unhelpful decides Acc_PF = 0
    (pf(F, N, N, T), (N, 0, 0, 0, N)),  # violation failed and decisive
    (pf(F, N, F, N), (0, 0, 0, N, N)),  # helpful failed
    (pf(T, F, T, N), (0, 0, N, N, 0)),  # inconsistent or unhelpful: an error either way
]


# All 16 complete verdicts against PrefEval's decision rule, written out as a truth table from its evaluation code
# (amazon-science/PrefEval, the error-type classification over check_acknowledge/violation/hallucination/helpful;
# restated in ../shared/data/README.md): unhelpful = not helpful; hallucination-of-preference violation =
# acknowledge and hallucinate and violate and not unhelpful; inconsistent = acknowledge and not hallucinate and
# violate and not unhelpful; preference-unaware violation = not acknowledge and violate and not unhelpful.
#  ack  hal  vio  help   e_puv e_hp e_ir e_ur  acc_pf
PREFEVAL_TRUTH_TABLE = """
    F    F    F    F      0     0    0    1     0
    F    F    F    T      0     0    0    0     1
    F    F    T    F      0     0    0    1     0
    F    F    T    T      1     0    0    0     0
    F    T    F    F      0     0    0    1     0
    F    T    F    T      0     0    0    0     1
    F    T    T    F      0     0    0    1     0
    F    T    T    T      1     0    0    0     0
    T    F    F    F      0     0    0    1     0
    T    F    F    T      0     0    0    0     1
    T    F    T    F      0     0    0    1     0
    T    F    T    T      0     0    1    0     0
    T    T    F    F      0     0    0    1     0
    T    T    F    T      0     0    0    0     1
    T    T    T    F      0     0    0    1     0
    T    T    T    T      0     1    0    0     0
"""


def _truth_rows():
    for line in PREFEVAL_TRUTH_TABLE.strip().splitlines():
        cells = line.split()
        yield pf(*(c == "T" for c in cells[:4])), tuple(int(c) for c in cells[4:])


@pytest.mark.parametrize("verdicts, expected", list(_truth_rows()))
def test_all_sixteen_verdict_combinations_follow_prefeval(verdicts, expected):
    got = tuple(int(indicator(m, verdicts)) for m in ("e_puv", "e_hp", "e_ir", "e_ur", "acc_pf"))
    assert got == expected


def test_the_truth_table_covers_every_combination_once():
    assert len({tuple(v.values()) for v, _ in _truth_rows()}) == 16


@pytest.mark.parametrize("verdicts, expected", PF_TABLE)
def test_prefeval_rules_and_nulls(verdicts, expected):
    got = tuple(indicator(m, verdicts) for m in ("e_puv", "e_hp", "e_ir", "e_ur", "acc_pf"))
    assert got == tuple(None if e is None else bool(e) for e in expected)


def da(dm, ie, th):
    return {"deep_mining": dm, "innovative_expansion": ie, "thoughtfulness": th}


@pytest.mark.parametrize(
    "verdicts, acc_da",
    [(da(T, F, F), 1), (da(F, T, F), 1), (da(F, F, T), 1), (da(F, T, T), 1), (da(F, F, F), 0),
     (da(F, N, T), 1), (da(N, N, T), 1), (da(F, N, F), N), (da(N, N, N), N)],
)  # fmt: skip
def test_acc_da_is_the_max_of_the_three(verdicts, acc_da):
    assert indicator("acc_da", verdicts) == (None if acc_da is None else bool(acc_da))
    for metric, check in (("m_dm", "deep_mining"), ("m_ie", "innovative_expansion"), ("m_th", "thoughtfulness")):
        assert indicator(metric, verdicts) == verdicts[check]


def test_a_check_not_judged_at_all_is_unknown_not_no():
    assert indicator("acc_mis", {}) is None and indicator("acc_mis", {"misleading": False}) is False
    assert indicator("acc_da", {"deep_mining": False}) is None


def row(rid, verdicts, topic="t", sample=0):
    return {"id": rid, "topic": topic, "sample": sample, "verdicts": verdicts}


def test_summary_percentages_n_and_excluded_by_hand():
    rows = [row(f"p{i}", v) for i, (v, _) in enumerate(PF_TABLE)]
    s = summarize(rows)
    # acc_pf: 1 at rows 0, 3, 7, 9, 10; 0 at rows 1, 2, 4-6, 8, 11, 12, 15; unknown at rows 13, 14
    assert s["n"]["acc_pf"] == 14 and s["excluded"]["acc_pf"] == 2 and s["acc_pf"] == round(100 * 5 / 14, 2)
    # e_ur: 1 at rows 2, 6, 8, 12; unknown at 14, 15
    assert s["n"]["e_ur"] == 14 and s["e_ur"] == round(100 * 4 / 14, 2)
    assert s["acc_da"] is None and s["n"]["acc_da"] == 0 and s["excluded"]["acc_da"] == len(rows)
    assert s["ci95"]["acc_da"] is None and s["ci95"]["acc_pf"] is not None  # no interval where nothing counted


def test_summary_equals_a_plain_loop_reference():
    rng = random.Random(7)
    checks = ("acknowledge", "violation", "hallucination", "helpful", "deep_mining", "innovative_expansion",
              "thoughtfulness", "misleading")  # fmt: skip
    rows = [row(f"p{i % 13}", {c: rng.choice([T, F, F, N]) for c in checks}, topic=f"t{i % 3}", sample=i)
            for i in range(200)]  # fmt: skip
    s = summarize(rows)
    for metric in METRICS:
        values = [v for v in (indicator(metric, r["verdicts"]) for r in rows) if v is not None]
        assert s["n"][metric] == len(values) and s["excluded"][metric] == len(rows) - len(values)
        assert s[metric] == pytest.approx(100 * sum(values) / len(values), abs=0.005)
        for topic in ("t0", "t1", "t2"):
            tv = [v for r in rows if r["topic"] == topic if (v := indicator(metric, r["verdicts"])) is not None]
            assert s["by_topic"][topic][metric] == pytest.approx(100 * sum(tv) / len(tv), abs=0.005)


def test_intervals_are_over_prompts_and_never_collapse():
    # One prompt with four samples says nothing about other prompts.
    rows = [row("only", {"misleading": v}, sample=i) for i, v in enumerate([T, F, T, F])]
    assert summarize(rows)["ci95"]["acc_mis"] == [0.0, 100.0]
    # 0 of 16 over 4 prompts: no prompt shows a Yes, so their samples may all agree: n = 4 prompts, t(3) = 3.182446,
    # upper = t^2 / (n + t^2) = 10.128 / 14.128 (the bootstrap said [0, 0])
    rows = [row(f"p{i}", {"misleading": F}, sample=j) for i in range(4) for j in range(4)]
    assert summarize(rows)["ci95"]["acc_mis"] == [0.0, 71.69]
    # and 16 of 16 mirrors it
    rows = [row(f"p{i}", {"misleading": T}, sample=j) for i in range(4) for j in range(4)]
    assert summarize(rows)["ci95"]["acc_mis"] == [28.31, 100.0]
    # one sample per prompt: nothing to correlate, n = 300, t(299) = 1.967930
    rows = [row(f"p{i}", {"misleading": F}) for i in range(300)]
    assert summarize(rows)["ci95"]["acc_mis"] == [0.0, 1.27]


def test_interval_contains_the_estimate():
    rng = random.Random(1)
    rows = [row(f"p{i}", {"misleading": rng.random() < 0.3}) for i in range(60)]
    s = summarize(rows)
    lo, hi = s["ci95"]["acc_mis"]
    assert lo < s["acc_mis"] < hi and hi - lo < 40


def test_paired_difference_uses_only_shared_ids():
    a = [row("x", {"misleading": T}), row("y", {"misleading": T}), row("z", {"misleading": F})]
    b = [row("y", {"misleading": F}), row("z", {"misleading": F}), row("w", {"misleading": T})]
    d = paired_difference(a, b)["acc_mis"]
    # shared: y (A 1, B 0) and z (A 0, B 0): 50 - 0; the unshared x and w are left out. By hand: two prompts,
    # t(1)^2 = 161.45; A: Wilson(0.5, n 2) = [0.0031, 0.9969]; B: 0 of 2, [0, 161.45 / 163.45 = 0.9878]; B's
    # residuals are all 0, so the correlation is 0: lo = 0.5 - sqrt(0.4969^2 + 0.9878^2), hi = 0.5 + 0.4969
    assert d["diff"] == 50.0 and d["ci95"] == [-60.57, 99.69]
    # identical runs: 0, with an interval around it
    same = paired_difference(a, a)["acc_mis"]
    assert same["diff"] == 0.0 and same["ci95"][0] < 0 < same["ci95"][1]
    assert paired_difference(a, [row("q", {"misleading": T})])["acc_mis"] == {"diff": None, "ci95": None}


def test_compare_layout_and_best_run():
    runs = {
        "base": [row("a", {**da(F, F, F), "misleading": T}), row("b", {**da(T, F, F), "misleading": F})],
        "cdra": [row("a", {**da(T, F, F), "misleading": F}), row("b", {**da(F, F, T), "misleading": F})],
        "tie": [row("a", {**da(T, F, F), "misleading": F}), row("b", {**da(T, F, F), "misleading": T})],
    }
    report = compare(runs)
    assert list(report["runs"]) == ["base", "cdra", "tie"]
    assert list(report["paired"]) == ["cdra-base", "tie-base", "tie-cdra"]
    assert report["paired"]["cdra-base"]["acc_da"]["diff"] == 50.0
    run = report["runs"]["cdra"]
    assert set(run) == {*METRICS, "n", "excluded", "ci95", "by_topic"}
    assert set(run["n"]) == set(run["excluded"]) == set(run["ci95"]) == set(METRICS)
    assert best_run(report, "acc_da") == ("cdra", 100.0)  # "tie" also has 100: the first wins
    assert best_run(report, "acc_mis") == ("cdra", 0.0)  # lower is better
    assert best_run(report, "acc_pf") is None  # not judged in any run
    with pytest.raises(ValueError, match="--select-by"):
        best_run(report, "accuracy")


def test_row_order_does_not_change_anything():
    # concurrent judging writes rows in completion order: intervals must not depend on it
    rng = random.Random(5)
    rows = [row(f"p{i % 9}", {"misleading": rng.random() < 0.4, "helpful": rng.random() < 0.8}, sample=i)
            for i in range(40)]  # fmt: skip
    shuffled = rows[:]
    rng.shuffle(shuffled)
    assert summarize(shuffled) == summarize(rows)
    assert paired_difference(shuffled, rows[:20]) == paired_difference(rows, rows[:20])
