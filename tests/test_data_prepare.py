"""`cdra data prepare` end to end: outputs and their contracts, stats, the split, the overwrite policy.

All-or-nothing writing, interrupts and crashes: test_data_writer.py.
"""

import json
from pathlib import Path

import pytest
from test_data_paths import record, write_deeppref

from cdra_plugin.cdpa.prompts import parse_score, policy_prompt, prm_prompt, render_steps
from cdra_plugin.cli import main
from cdra_plugin.data.hf import load_deeppref_dataset
from cdra_plugin.data.prepare import PrepareError, PrepareOptions, prepare_deeppref, prepare_prefeval
from cdra_plugin.data.split import SplitError, topic_quotas
from cdra_plugin.stub import ScriptedLLM

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "cdra_plugin" / "demo" / "samples"
REAL_PREFEVAL = ROOT.parent / "shared" / "data" / "prefeval_explicit"
OUTPUTS = ["prm_sft.jsonl", "rft.jsonl", "rl_prompts.jsonl", "eval.jsonl", "stats.json"]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def raw_sample() -> list[tuple[str, int, dict]]:
    """(topic, index, raw record) of the shipped sample, read without the code under test."""
    out = []
    for path in sorted(SAMPLE.glob("cot_*_preferences.json")):
        topic = path.stem[len("cot_") : -len("_preferences")]
        out += [(topic, i, raw) for i, raw in enumerate(json.loads(path.read_text()))]
    return out


def leaves_and_nodes(raw: dict) -> tuple[list[list[str]], set[str]]:
    tree = {k: v for k, v in raw["thought_tree"].items()}
    paths, stack = [], [[str(c)] for c in tree["0"]["children"]]
    while stack:
        p = stack.pop()
        kids = [str(c) for c in tree[p[-1]]["children"]]
        paths += [p] if not kids else []
        stack += [p + [k] for k in kids]
    return paths, {n for p in paths for n in p}


def test_sample_end_to_end_outputs_match_the_trees(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "prepare", "--input", str(SAMPLE), "--output", str(out), "--eval-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    stats = json.loads((out / "stats.json").read_text())
    prm, rft, rl, ev = (rows(out / n) for n in OUTPUTS[:4])
    eval_ids = {r["id"] for r in ev}
    sample = raw_sample()
    by_id = {f"{t}/{i}": raw for t, i, raw in sample}
    train_ids = set(by_id) - eval_ids

    assert len(ev) == 2 and len(rl) == len(by_id) - 2 and {r["id"] for r in rl} == train_ids
    expected_prm = sum(len(leaves_and_nodes(by_id[i])[1]) for i in train_ids)
    assert len(prm) == expected_prm and {r["id"] for r in prm} == train_ids
    assert len(rft) == len(train_ids) and {r["id"] for r in rft} == train_ids
    assert stats["outputs"] == {n: len(x) for n, x in zip(OUTPUTS[:4], (prm, rft, rl, ev), strict=True)}
    assert stats["paths"]["total"] == sum(len(leaves_and_nodes(raw)[0]) for raw in by_id.values())
    assert stats["records"] == {"valid": len(by_id), "distinct_scenarios": len(by_id), "eval_scenarios": 2}
    assert stats["skipped"] == {"count": 0, "records": []}
    assert set(stats["topics"]) == {"Travel", "Health", "Finance", "Education"}
    assert sum(t["prm_sft"] for t in stats["topics"].values()) == len(prm)
    assert stats["prm_scores"]["count"] == len(prm) and sum(stats["prm_scores"]["histogram"]["counts"]) == len(prm)
    printed = capsys.readouterr().out
    assert f"prm_sft.jsonl: {len(prm)} rows" in printed and "2 held out for eval" in printed

    # PRM SFT rows: Fig. 15 prompt over s^1..s^j, target "Reasoning: c_j" + last line "SCORE: r_j".
    for row in prm:
        raw = by_id[row["id"]]
        tree = raw["thought_tree"]
        (user,), (assistant,) = row["input"], row["output"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        target = assistant["content"]
        assert target.splitlines()[-1] == f"SCORE: {row['score']:g}"
        assert parse_score(target) == pytest.approx(max(-1, min(1, row["score"])))
        node = next(
            n
            for n in tree.values()
            if n.get("reasoning") and target == f"Reasoning: {n['reasoning']}\nSCORE: {n['score']:g}"
        )
        assert user["content"].endswith(f"Step {row['step']}: {node['thought']}")
        assert f'User Preference: "{raw["user_profile"]}"' in user["content"]

    # RFT rows: the best path by R = sum of scores, in the Fig. 14 format.
    for row in rft:
        raw = by_id[row["id"]]
        paths, _ = leaves_and_nodes(raw)
        tree = raw["thought_tree"]
        totals = [sum(tree[n]["score"] for n in p) for p in paths]
        assert row["return"] == pytest.approx(max(totals))
        best = paths[totals.index(max(totals))]
        assert row["output"][0]["content"] == render_steps([tree[n]["thought"] for n in best])
        assert row["input"] == [
            {"role": "user", "content": policy_prompt(raw["user_profile"], raw["initial_question"])}
        ]

    # RL prompts and eval: the Fig. 14 prompt and the exact label the gateway parses.
    for row in rl + ev:
        raw = by_id[row["id"]]
        assert row["input"] == [
            {"role": "user", "content": policy_prompt(raw["user_profile"], raw["initial_question"])}
        ]
        assert row["label"] == json.dumps(
            {
                "preference": raw["user_profile"],
                "question": raw["initial_question"],
                "id": row["id"],
                "topic": row["topic"],
            },
            ensure_ascii=False,
        )
        assert list(json.loads(row["label"])) == ["preference", "question", "id", "topic"]
    for row in ev:
        assert row["reference"].startswith("Step 1: ") and (row["preference"], row["question"]) == (
            by_id[row["id"]]["user_profile"],
            by_id[row["id"]]["initial_question"],
        )


def test_prm_examples_per_node_versus_per_path_and_top_k(tmp_path):
    # Root with two children; node 1 has three leaves: 4 paths, 5 distinct prefixes, 7 (path, step) pairs.
    raw = record({"0": ["1", "2"], "1": ["3", "4", "5"]}, scores={"1": 0.9, "3": 0.1, "4": 0.6, "5": 0.6, "2": 0.2})
    src = write_deeppref(tmp_path, "T", [raw])
    node = prepare_deeppref(src, tmp_path / "node", PrepareOptions(eval_size=0, top_k=2, progress=False))
    path = prepare_deeppref(src, tmp_path / "path", PrepareOptions(eval_size=0, prm_examples="path", progress=False))
    assert node["outputs"]["prm_sft.jsonl"] == 5 and path["outputs"]["prm_sft.jsonl"] == 7
    rft = rows(tmp_path / "node" / "rft.jsonl")
    # (1,4) and (1,5) both return 1.5: the tie keeps depth-first order.
    assert [(r["rank"], r["output"][0]["content"]) for r in rft] == [
        (1, "Step 1: s1\nStep 2: s4"),
        (2, "Step 1: s1\nStep 2: s5"),
    ]
    prm = rows(tmp_path / "node" / "prm_sft.jsonl")
    assert prm[0]["input"][0]["content"] == prm_prompt("I like quiet places.", "Where to go?", ["s1"])
    with pytest.raises(PrepareError, match="--top-k"):
        prepare_deeppref(src, tmp_path / "x", PrepareOptions(eval_size=0, top_k=0, progress=False))


def test_out_of_range_scores_are_written_at_the_scale_end_and_counted(tmp_path, capsys):
    scores = {"1": 1.5, "2": -3, "3": 1.0, "4": -1.0}  # the ends themselves are on the scale
    src = write_deeppref(tmp_path, "T", [record({"0": ["1"], "1": ["2"], "2": ["3"], "3": ["4"]}, scores=scores)])
    assert main(["data", "prepare", "--input", src, "--output", str(tmp_path / "o"), "--eval-size", "0"]) == 0
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    targets = [r["output"][0]["content"] for r in rows(tmp_path / "o" / "prm_sft.jsonl")]
    # the PRM is trained on the Fig. 15 scale: the gateway rejects a score off it (prompts.prm_target)
    assert [t.splitlines()[-1] for t in targets] == ["SCORE: 1", "SCORE: -1", "SCORE: 1", "SCORE: -1"]
    assert [parse_score(t) for t in targets] == [1.0, -1.0, 1.0, -1.0]
    assert stats["prm_scores"]["clipped"] == 2 and stats["prm_scores"]["max"] == 1.5  # as annotated
    assert stats["prm_scores"]["histogram"]["above_1"] == 1 and stats["prm_scores"]["histogram"]["below_-1"] == 1
    assert "2 PRM target(s) annotated off the [-1, 1] scale were written at its nearest end" in capsys.readouterr().err


def many_scenarios(directory: Path, sizes: dict[str, int]) -> None:
    for topic, n in sizes.items():
        recs = [record({"0": ["1"]}, preference=f"{topic} pref {i}", question=f"q{i}") for i in range(n)]
        write_deeppref(directory, topic, recs)


def eval_ids(out: Path) -> list[str]:
    return sorted(r["id"] for r in rows(out / "eval.jsonl"))


def test_split_is_deterministic_stratified_disjoint_and_order_independent(tmp_path):
    sizes = {"A": 20, "B": 10, "C": 7, "D": 3}
    src = tmp_path / "src"
    src.mkdir()
    many_scenarios(src, sizes)
    opts = dict(eval_size=8, progress=False)
    s1 = prepare_deeppref(src, tmp_path / "o1", PrepareOptions(seed=1, **opts))
    prepare_deeppref(src, tmp_path / "o2", PrepareOptions(seed=1, **opts))
    prepare_deeppref(src, tmp_path / "o3", PrepareOptions(seed=2, **opts))
    assert eval_ids(tmp_path / "o1") == eval_ids(tmp_path / "o2")
    assert eval_ids(tmp_path / "o1") != eval_ids(tmp_path / "o3")
    assert (
        {t: c["eval"] for t, c in s1["topics"].items()} == topic_quotas(sizes, 8) == {"A": 4, "B": 2, "C": 1, "D": 1}
    )
    held = set(eval_ids(tmp_path / "o1"))
    for name in ["prm_sft.jsonl", "rft.jsonl", "rl_prompts.jsonl"]:
        assert held.isdisjoint(r["id"] for r in rows(tmp_path / "o1" / name))
    # Records shuffled inside the files: the same (P, q) pairs are held out.
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for path in src.iterdir():
        (shuffled / path.name).write_text(json.dumps(list(reversed(json.loads(path.read_text())))))
    prepare_deeppref(shuffled, tmp_path / "o4", PrepareOptions(seed=1, **opts))
    pq = lambda out: sorted(json.loads(r["label"])["preference"] for r in rows(out / "eval.jsonl"))  # noqa: E731
    assert pq(tmp_path / "o4") == pq(tmp_path / "o1")


def test_topic_quotas_sum_exactly_and_never_exceed_a_topic():
    for sizes in [{"a": 1, "b": 1, "c": 1}, {"a": 50, "b": 31, "c": 62, "d": 3}, {"x": 5}]:
        for k in range(sum(sizes.values()) + 1):
            quotas = topic_quotas(sizes, k)
            assert sum(quotas.values()) == k and all(quotas[t] <= sizes[t] for t in sizes)


def test_duplicate_pairs_stay_on_one_side_and_are_prompted_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    many_scenarios(src, {"A": 6})
    dup = record({"0": ["1", "2"]}, preference="A pref 0", question="q0")
    write_deeppref(src, "B", [dup, dup])
    for seed in range(6):
        out = tmp_path / f"o{seed}"
        stats = prepare_deeppref(src, out, PrepareOptions(eval_size=3, seed=seed, progress=False))
        assert stats["records"] == {"valid": 8, "distinct_scenarios": 6, "eval_scenarios": 3}
        train_pq = {json.loads(r["label"])["preference"] + r["id"] for r in rows(out / "rl_prompts.jsonl")}
        ev = rows(out / "eval.jsonl")
        assert len(train_pq) + len(ev) == 6
        in_eval = any(json.loads(r["label"])["preference"] == "A pref 0" for r in ev)
        prm_ids = {r["id"] for r in rows(out / "prm_sft.jsonl")}
        assert in_eval == prm_ids.isdisjoint({"A/0", "B/0", "B/1"})
        assert in_eval or {"A/0", "B/0", "B/1"} <= prm_ids


def test_eval_size_errors_and_zero(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["data", "prepare", "--input", str(SAMPLE), "--output", str(out), "--no-progress"])
    assert code == 2 and not out.exists()  # bad input
    err = capsys.readouterr().err
    assert err.startswith("cdra data prepare: error: ") and err.count("\n") == 1
    assert "--eval-size 300 is more than the 8 distinct scenarios" in err and "e.g. --eval-size 1 " in err
    with pytest.raises(SplitError, match=">= 0"):
        prepare_deeppref(SAMPLE, out, PrepareOptions(eval_size=-1, progress=False))
    stats = prepare_deeppref(SAMPLE, out, PrepareOptions(eval_size=0, progress=False))
    assert stats["outputs"]["eval.jsonl"] == 0 and (out / "eval.jsonl").read_text() == ""


def test_existing_outputs_are_not_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["data", "prepare", "--input", str(SAMPLE), "--output", str(out), "--eval-size", "2", "--no-progress"]
    assert main(args) == 0
    before = {n: (out / n).read_bytes() for n in OUTPUTS}
    assert main(args + ["--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdra data prepare: error: ") and "already holds prm_sft.jsonl" in err
    assert "pass --overwrite" in err
    assert {n: (out / n).read_bytes() for n in OUTPUTS} == before
    assert main(args + ["--seed", "5", "--overwrite"]) == 0
    assert json.loads((out / "stats.json").read_text())["options"]["seed"] == 5
    # A PrefEval run over a DeepPref output dir removes the DeepPref-only files: stats.json describes the dir.
    pe = tmp_path / "pe"
    pe.mkdir()
    (pe / "t.json").write_text(json.dumps([{"preference": "P", "question": "Q"}]))
    assert (
        main(["data", "prepare", "--prefeval", str(pe), "--output", str(out), "--eval-size", "0", "--overwrite"]) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "rl_prompts.jsonl", "stats.json"]


def test_an_output_in_the_input_is_refused_naming_both_paths(tmp_path, capsys):
    trees = tmp_path / "trees"
    trees.mkdir()
    for source in SAMPLE.glob("cot_*_preferences.json"):
        (trees / source.name).write_bytes(source.read_bytes())
    before = sorted(p.name for p in trees.iterdir())
    (tmp_path / "link").symlink_to(trees)
    glob = str(trees / "*.json")
    for spec, output, where in [
        (trees, trees, f"--output {trees} is the same folder as --input {trees}:"),
        (trees, trees / "prepared", f"--output {trees / 'prepared'} is inside --input {trees}:"),
        (trees, tmp_path / "link", f"--output {tmp_path / 'link'} is the same folder as --input {trees} (both are "),
        (tmp_path / "link", trees / "x", f"--output {trees / 'x'} is inside --input {tmp_path / 'link'} ("),
        (glob, trees, f"--output {trees} is the same folder as --input {glob}:"),
    ]:
        code = main(["data", "prepare", "--input", str(spec), "--output", str(output), "--eval-size", "1"])
        err = capsys.readouterr().err
        assert code == 2 and where in err and "the next run would read this run's files as input" in err, err
        assert sorted(p.name for p in trees.iterdir()) == before  # nothing written, no folder made
    pe = tmp_path / "pe"
    pe.mkdir()
    (pe / "t.json").write_text(json.dumps([{"preference": "P", "question": "Q"}]))
    assert main(["data", "prepare", "--prefeval", str(pe), "--output", str(pe), "--eval-size", "0"]) == 2
    assert f"--output {pe} is the same folder as --prefeval {pe}" in capsys.readouterr().err
    # one input file: outputs beside it are never read as input
    single = trees / "cot_Travel_preferences.json"
    assert main(["data", "prepare", "--input", str(single), "--output", str(trees), "--eval-size", "0"]) == 0


def test_invalid_input_writes_nothing_and_skip_invalid_reports(tmp_path, capsys):
    out = tmp_path / "o"
    malformed = str(ROOT / "tests" / "assets" / "malformed_trees")
    assert main(["data", "prepare", "--input", malformed, "--output", str(out), "--eval-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdra data prepare: error: ") and err.count("\n") == 1  # one line
    assert "cot_Broken_preferences.json: record 1: user_profile: missing" in err and "--skip-invalid" in err
    assert not out.exists() or not any(out.iterdir())
    code = main(["data", "prepare", "--input", malformed, "--output", str(out), "--eval-size", "0", "--skip-invalid"])
    assert code == 0
    assert "skipped 11 invalid record(s) or file(s)" in capsys.readouterr().err
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"]["count"] == 11 and stats["records"]["valid"] == 1
    assert {s["record"] for s in stats["skipped"]["records"]} == set(range(1, 11)) | {None}


def test_dataset_dict_holds_the_same_rows_as_the_files(tmp_path):
    ds = load_deeppref_dataset(SAMPLE, eval_size=2, seed=3)
    prepare_deeppref(SAMPLE, tmp_path, PrepareOptions(eval_size=2, seed=3, progress=False))
    assert set(ds) == {"prm_sft", "rft", "rl_prompts", "eval"}
    for split in ds:
        assert ds[split].to_list() == rows(tmp_path / f"{split}.jsonl")


def write_prefeval(directory: Path) -> None:
    directory.mkdir()
    for topic, n in {"travel_hotel": 9, "shop_fashion": 5, "pet_ownership": 2}.items():
        recs = [{"preference": f"{topic} P{i}", "question": f"Q{i}", "explanation": f"E{i}"} for i in range(n)]
        if topic == "travel_hotel":
            recs.append(dict(recs[0]))  # an exact duplicate, as the real PrefEval has
            del recs[1]["explanation"]  # and one record without an explanation
        (directory / f"{topic}.json").write_text(json.dumps(recs))


def test_prefeval_prompts_and_eval(tmp_path, capsys):
    src = tmp_path / "prefeval"
    write_prefeval(src)
    out = tmp_path / "o"
    assert main(["data", "prepare", "--prefeval", str(src), "--output", str(out), "--eval-size", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "rl_prompts.jsonl", "stats.json"]
    rl, ev = rows(out / "rl_prompts.jsonl"), rows(out / "eval.jsonl")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == {"valid": 17, "distinct_scenarios": 16, "eval_scenarios": 4}
    assert (len(rl), len(ev)) == (12, 4) and stats["outputs"] == {"rl_prompts.jsonl": 12, "eval.jsonl": 4}
    assert {t: c["eval"] for t, c in stats["topics"].items()} == {
        "pet_ownership": 1,
        "shop_fashion": 1,
        "travel_hotel": 2,
    }
    assert stats["topics"]["travel_hotel"]["duplicates"] == 1
    pairs = [(json.loads(r["label"])["preference"], json.loads(r["label"])["question"]) for r in rl + ev]
    assert len(set(pairs)) == len(pairs) == 16
    for row in rl + ev:
        label = json.loads(row["label"])
        assert list(label) == ["preference", "question", "id", "topic"] and label["id"] == row["id"]
        assert row["input"] == [{"role": "user", "content": policy_prompt(label["preference"], label["question"])}]
        assert row["datasource"] == "prefeval"
    assert all(r["explanation"] == (f"E{r['id'].split('/')[1]}" if r["id"] != "travel_hotel/1" else "") for r in ev)
    assert (
        prepare_prefeval(src, tmp_path / "o2", PrepareOptions(eval_size=4, progress=False))["outputs"]
        == stats["outputs"]
    )
    assert eval_ids(tmp_path / "o2") == eval_ids(out)


@pytest.mark.skipif(not REAL_PREFEVAL.is_dir(), reason="shared PrefEval data not present")
def test_real_prefeval_directory(tmp_path):
    stats = prepare_prefeval(REAL_PREFEVAL, tmp_path, PrepareOptions(eval_size=300, progress=False))
    assert stats["records"]["valid"] == 1000 and stats["skipped"]["count"] == 0
    distinct = stats["records"]["distinct_scenarios"]
    assert stats["outputs"] == {"rl_prompts.jsonl": distinct - 300, "eval.jsonl": 300}
    assert len(stats["topics"]) == 20
    train = {r["label"] for r in rows(tmp_path / "rl_prompts.jsonl")}
    held = {r["label"] for r in rows(tmp_path / "eval.jsonl")}
    strip = lambda labels: {tuple(json.loads(x)[k] for k in ("preference", "question")) for x in labels}  # noqa: E731
    assert strip(train).isdisjoint(strip(held))


def test_rft_rows_are_few_shot_demonstrations_for_cdra_eval(tmp_path):
    """`cdra eval generate --mode few-shot --shots rft.jsonl` shows each demonstration's P, q and path as written."""
    out = tmp_path / "out"
    assert main(["data", "prepare", "--input", str(SAMPLE), "--output", str(out), "--eval-size", "2"]) == 0
    rft = rows(out / "rft.jsonl")
    assert all(r["preference"] and r["question"] and r["id"] and r["topic"] for r in rft)
    with ScriptedLLM(lambda request: "An answer.", model="policy") as policy:
        argv = ["eval", "generate", "--data", str(out / "eval.jsonl"), "--backend", policy.base_url, "--model",
                "policy", "--mode", "few-shot", "--shots", str(out / "rft.jsonl"), "--k", str(len(rft)),
                "--output", str(tmp_path / "few-shot.jsonl")]  # fmt: skip
        assert main(argv) == 0
        prompts = [request.prompt for request in policy.requests]
    assert len(prompts) == 2  # one per held-out scenario, each showing every demonstration
    for row in rft:
        answer = row["output"][0]["content"]
        shown = f"User preference: {row['preference']}\nQuestion: {row['question']}\nAnswer: {answer}"
        assert all(shown in prompt for prompt in prompts)
