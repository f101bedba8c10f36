"""The paper's evaluation metrics (Section 3.1, Eqs. 4-5, Table 1) from judge verdicts, with bootstrap intervals.

Per response, from its verdicts {check: True | False | None} (PrefEval's decision rules for the four errors, as its
evaluation code applies them to its four checks; an error other than e_ur needs a violation by a helpful response):

    e_ur   = not helpful                                                   unhelpful response
    e_hp   = acknowledge and hallucination and violation and helpful       hallucination-of-preference violation
    e_ir   = acknowledge and not hallucination and violation and helpful   inconsistent response
    e_puv  = not acknowledge and violation and helpful                     preference-unaware violation
    acc_pf = 1 - max(e_puv, e_hp, e_ir, e_ur)                              Eq. 5
    acc_da = max(m_dm, m_ie, m_th)                                         Eq. 4
    acc_mis = misleading;  m_th, m_dm, m_ie = thoughtfulness, deep_mining, innovative_expansion

A ``null`` verdict (a failed or unparsable judge call, or a check not asked) is unknown, never No. A response counts
in a metric when the metric has the same value whatever its unknown verdicts are, and is excluded from it otherwise:
``acc_da`` is 1 when m_dm is Yes even if m_ie is null; ``e_puv`` is 0 when acknowledge is Yes whatever violation is;
hallucination, asked only where acknowledge is Yes, matters only there (PrefEval's rule). Each metric reports the
responses it counts (``n``) and those it excludes (``excluded``).

Aggregates are percentages over the counted responses. ``ci95`` is a 95% percentile bootstrap over prompts: the
samples of one prompt id are resampled together, since they share the question. ``paired`` differences
(later run minus earlier run, percentage points) use only the ids both runs have, with the same resampled ids for
both runs, which removes the between-prompt variance that separate intervals would double count.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import numpy as np

METRICS = ("acc_pf", "acc_da", "acc_mis", "m_th", "m_dm", "m_ie", "e_puv", "e_hp", "e_ir", "e_ur")
LOWER_IS_BETTER = frozenset({"acc_mis", "e_puv", "e_hp", "e_ir", "e_ur"})

Verdicts = dict[str, bool]


def _e_ur(v: Verdicts) -> bool:
    return not v["helpful"]


def _e_hp(v: Verdicts) -> bool:
    # a restatement that drifts from the preference is an error only when the response then violates it
    return v["acknowledge"] and v["hallucination"] and v["violation"] and v["helpful"]


def _e_ir(v: Verdicts) -> bool:
    return v["acknowledge"] and not v["hallucination"] and v["violation"] and v["helpful"]


def _e_puv(v: Verdicts) -> bool:
    return not v["acknowledge"] and v["violation"] and v["helpful"]


_PF = ("acknowledge", "hallucination", "violation", "helpful")
# metric -> (the checks it reads, its value for complete verdicts)
FORMULAS: dict[str, tuple[tuple[str, ...], Callable[[Verdicts], bool]]] = {
    "acc_pf": (_PF, lambda v: not (_e_puv(v) or _e_hp(v) or _e_ir(v) or _e_ur(v))),
    "acc_da": (
        ("deep_mining", "innovative_expansion", "thoughtfulness"),
        lambda v: v["deep_mining"] or v["innovative_expansion"] or v["thoughtfulness"],
    ),
    "acc_mis": (("misleading",), lambda v: v["misleading"]),
    "m_th": (("thoughtfulness",), lambda v: v["thoughtfulness"]),
    "m_dm": (("deep_mining",), lambda v: v["deep_mining"]),
    "m_ie": (("innovative_expansion",), lambda v: v["innovative_expansion"]),
    "e_puv": (("acknowledge", "violation", "helpful"), _e_puv),
    "e_hp": (_PF, _e_hp),
    "e_ir": (_PF, _e_ir),
    "e_ur": (("helpful",), _e_ur),
}


def indicator(metric: str, verdicts: dict[str, bool | None]) -> bool | None:
    """The metric's 0/1 value for one response, or None when its unknown verdicts could change it.

    Every completion of the unknown (null or absent) verdicts is tried: at most 2^4 for ``acc_pf``.
    """
    checks, formula = FORMULAS[metric]
    unknown = [c for c in checks if verdicts.get(c) is None]
    outcomes = {
        bool(formula({**verdicts, **dict(zip(unknown, values, strict=True))}))
        for values in itertools.product((False, True), repeat=len(unknown))
    }
    return outcomes.pop() if len(outcomes) == 1 else None


def _tables(rows: Iterable[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Prompt ids (sorted: the file's row order, which concurrent judging varies, must not move the bootstrap), and
    per id and metric the sum of counted indicators (S) and how many were counted (C)."""
    ids = sorted({str(row["id"]) for row in rows})
    index = {rid: i for i, rid in enumerate(ids)}
    sums, counts = np.zeros((len(ids), len(METRICS))), np.zeros((len(ids), len(METRICS)))
    for row in rows:
        i = index[str(row["id"])]
        for m, metric in enumerate(METRICS):
            value = indicator(metric, row["verdicts"])
            if value is not None:
                sums[i, m] += value
                counts[i, m] += 1
    return ids, sums, counts


def _percent(s: np.ndarray, c: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * s / c  # nan where nothing was counted


def _resampled(s: np.ndarray, c: np.ndarray, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(bootstrap, metrics) percentages over ids drawn with replacement; ``s``/``c`` may be stacked on axis 0."""
    n = s.shape[-2]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)  # times each id is drawn
    return _percent(weights @ s, weights @ c)


def _interval(draws: np.ndarray) -> list:
    """[lo, hi] per metric column (None where no resample counted anything)."""
    out = []
    for column in draws.T:
        column = column[np.isfinite(column)]
        out.append([_round(np.percentile(column, 2.5)), _round(np.percentile(column, 97.5))] if column.size else None)
    return out


def _round(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 2)


def summarize(rows: list[dict], *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """One run's metrics: values (percent), ``n``, ``excluded``, ``ci95``, ``by_topic``."""
    ids, s, c = _tables(rows)
    total = s.sum(axis=0), c.sum(axis=0)
    values = _percent(*total)
    result: dict = {metric: _round(values[m]) for m, metric in enumerate(METRICS)}
    result["n"] = {metric: int(total[1][m]) for m, metric in enumerate(METRICS)}
    result["excluded"] = {metric: len(rows) - int(total[1][m]) for m, metric in enumerate(METRICS)}
    intervals = _interval(_resampled(s, c, bootstrap, np.random.default_rng(seed))) if bootstrap and ids else None
    result["ci95"] = {metric: intervals[m] if intervals else None for m, metric in enumerate(METRICS)}
    by_topic: dict[str, list[dict]] = {}
    for row in rows:
        by_topic.setdefault(str(row.get("topic", "unknown")), []).append(row)
    result["by_topic"] = {}
    for topic in sorted(by_topic):
        _, ts, tc = _tables(by_topic[topic])
        topic_values = _percent(ts.sum(axis=0), tc.sum(axis=0))
        result["by_topic"][topic] = {metric: _round(topic_values[m]) for m, metric in enumerate(METRICS)}
    return result


def paired_difference(rows_a: list[dict], rows_b: list[dict], *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """A minus B per metric (percentage points) on the ids both share: ``{metric: {"diff", "ci95"}}``."""
    ids_a, s_a, c_a = _tables(rows_a)
    ids_b, s_b, c_b = _tables(rows_b)
    shared = sorted(set(ids_a) & set(ids_b))
    pick_a = [ids_a.index(i) for i in shared] if shared else []
    pick_b = [ids_b.index(i) for i in shared] if shared else []
    s = np.stack([s_a[pick_a], s_b[pick_b]]) if shared else np.zeros((2, 0, len(METRICS)))
    c = np.stack([c_a[pick_a], c_b[pick_b]]) if shared else np.zeros((2, 0, len(METRICS)))
    point = _percent(s[0].sum(axis=0), c[0].sum(axis=0)) - _percent(s[1].sum(axis=0), c[1].sum(axis=0))
    intervals = None
    if bootstrap and shared:
        draws = _resampled(s, c, bootstrap, np.random.default_rng(seed))  # (2, B, M): the same ids for both runs
        intervals = _interval(draws[0] - draws[1])
    return {
        metric: {"diff": _round(point[m]), "ci95": intervals[m] if intervals else None}
        for m, metric in enumerate(METRICS)
    }


def compare(runs: dict[str, list[dict]], *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """The report: ``{"runs": {name: summarize(...)}, "paired": {"B-A": ...}}`` for every later run B and earlier A."""
    names = list(runs)
    report = {"runs": {name: summarize(runs[name], bootstrap=bootstrap, seed=seed) for name in names}, "paired": {}}
    for i, j in itertools.combinations(range(len(names)), 2):
        later, earlier = names[j], names[i]
        report["paired"][f"{later}-{earlier}"] = paired_difference(
            runs[later], runs[earlier], bootstrap=bootstrap, seed=seed
        )
    return report


def best_run(report: dict, metric: str) -> tuple[str, float] | None:
    """The run with the best ``metric`` (lowest for error metrics; the first on ties), or None if none has it."""
    if metric not in METRICS:
        raise ValueError(f"--select-by must be one of {', '.join(METRICS)}, got {metric!r}")
    scored = [(name, run[metric]) for name, run in report["runs"].items() if run[metric] is not None]
    if not scored:
        return None
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return max(scored, key=lambda item: sign * item[1])
