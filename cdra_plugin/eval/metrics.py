"""The paper's evaluation metrics (Section 3.1, Eqs. 4-5, Table 1) from judge verdicts, with 95% intervals.

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

Aggregates are percentages over the counted responses, with 95% intervals over prompts (``ci95``, in percent):

- **Rates**: a Wilson score interval on the prompt-clustered effective sample size (Korn and Graubard, 1998; the
  NCHS standard for proportions from clustered samples). The samples of one prompt share the question, so they
  are correlated: with per-prompt successes S_i and counted responses C_i over K prompts, N = sum C_i and
  p = sum S_i / N, the variance of p over prompts is V = K/(K-1) sum (S_i - p C_i)^2 / N^2, the design effect is
  deff = max(1, V / (p(1-p)/N)) and the effective sample size n = N / deff. The spread of the prompts shows how
  alike a prompt's samples are only where the rarer outcome occurs: when fewer than 3 prompts show it (0% and
  100% included), deff = sum C_i^2 / N, as if every prompt's samples agreed (n = K for prompts of equal size; with
  one sample per prompt that is n = N, nothing lost). The Wilson interval for p with n observations then uses
  Student's t with K - 1 degrees of freedom in place of z (Korn and Graubard's degrees-of-freedom adjustment: few
  prompts, wider intervals). Unlike a percentile bootstrap it does not collapse to a point at 0% or 100% (0 of 16
  responses over 4 prompts gives [0, 71.7]: four prompts say little), and its coverage holds with few prompts
  (tests/test_eval_intervals.py simulates it: at least 93% in every cell of p in {2, 50, 95}% x {10, 50, 300}
  prompts of 4 correlated samples). One prompt alone gives [0, 100]: it says nothing about other prompts.
- **Paired differences** (later run minus earlier run, percentage points) use only the ids both runs have:
  Newcombe's hybrid score interval for paired rates (Newcombe, 1998, method 10) from the two runs' intervals above,
  with the correlation of the runs' per-prompt residuals (S_i - p C_i), so the between-prompt variance both runs
  share is not counted twice. Each interval holds 95% on its own: they are not adjusted for multiple comparisons
  (10 metrics times every pair of runs), and the report says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from statistics import NormalDist

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
    """Prompt ids (sorted: the file's row order, which concurrent judging varies, must not matter), and
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


LEVEL = 0.95
INTERVAL = {
    "level": LEVEL,
    "rates": "Wilson score interval on the prompt-clustered effective sample size (Korn-Graubard), Student's t with "
    "prompts - 1 degrees of freedom",
    "paired": "Newcombe's hybrid score interval for paired rates (method 10), correlation of the per-prompt residuals",
    "multiple_comparisons": "not adjusted: each interval holds 95% on its own",
}
_Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
MIN_SPREAD = 3  # prompts that must show the rarer outcome before the design effect is estimated from the data
_T_SMALL = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445}  # Student's t 0.975 quantiles, exact


def t_quantile(df: np.ndarray) -> np.ndarray:
    """The 0.975 quantile of Student's t for ``df`` >= 1 degrees of freedom (Cornish-Fisher above 4, Abramowitz and
    Stegun 26.7.5: within 1e-3 of the exact value there)."""
    v = np.maximum(np.asarray(df, dtype=float), 1.0)
    z = _Z
    g = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
         (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)  # fmt: skip
    t = z + g[0] / v + g[1] / v**2 + g[2] / v**3 + g[3] / v**4
    for small, exact in _T_SMALL.items():
        t = np.where(v == small, exact, t)
    return t


def _spread(s: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row of ``s``/``c`` (..., prompts): the rate p, its per-prompt residuals S_i - p C_i, N and K."""
    n, k = c.sum(-1), (c > 0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s.sum(-1) / n
    return p, s - np.nan_to_num(p)[..., None] * c, n, k


def wilson_clustered(s: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rate intervals (lo, hi), as fractions, from per-prompt counted successes ``s`` and counts ``c``.

    Shapes: ``s``, ``c`` (..., K) with K prompts (a prompt with ``c`` 0 does not count); returns two arrays (...),
    NaN where nothing was counted. The module docstring gives the method.
    """
    p, residual, n, k = _spread(s, c)
    rarer = np.where(p <= 0.5, (s > 0).sum(-1), ((c > 0) & (s < c)).sum(-1))  # prompts showing the rarer outcome
    with np.errstate(invalid="ignore", divide="ignore"):
        v_prompts = k / (k - 1) * (residual**2).sum(-1) / n**2
        v_binomial = p * (1 - p) / n
        alike = (c**2).sum(-1) / n  # the design effect if every prompt's samples agreed
        deff = np.where(rarer < MIN_SPREAD, alike, np.maximum(1.0, v_prompts / v_binomial))
        n_eff = n / deff
        t2 = t_quantile(k - 1) ** 2
        centre = (p + t2 / (2 * n_eff)) / (1 + t2 / n_eff)
        half = np.sqrt(t2) / (1 + t2 / n_eff) * np.sqrt(p * (1 - p) / n_eff + t2 / (4 * n_eff**2))
    lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    lo, hi = np.where(k == 1, 0.0, lo), np.where(k == 1, 1.0, hi)
    return np.where(k == 0, np.nan, lo), np.where(k == 0, np.nan, hi)


def newcombe_paired(s: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The difference A - B of two runs' rates on shared prompts and its interval (lo, hi), as fractions.

    Shapes: ``s``, ``c`` (2, ..., K), run A first; returns three arrays (...), NaN where a run counted nothing.
    """
    (p_a, r_a, _, _), (p_b, r_b, _, _) = _spread(s[0], c[0]), _spread(s[1], c[1])
    (l_a, u_a), (l_b, u_b) = wilson_clustered(s[0], c[0]), wilson_clustered(s[1], c[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.nan_to_num((r_a * r_b).sum(-1) / np.sqrt((r_a**2).sum(-1) * (r_b**2).sum(-1)))
        below = np.sqrt(np.maximum(0.0, (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2))
        above = np.sqrt(np.maximum(0.0, (u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2))
    d = p_a - p_b
    return d, np.clip(d - below, -1.0, 1.0), np.clip(d + above, -1.0, 1.0)


def _intervals(lo: np.ndarray, hi: np.ndarray) -> dict:
    """{metric: [lo, hi] in percent, or None where nothing was counted}."""
    return {
        metric: None if not np.isfinite(lo[m]) else [_round(100 * lo[m]), _round(100 * hi[m])]
        for m, metric in enumerate(METRICS)
    }


def _round(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 2)


def summarize(rows: list[dict]) -> dict:
    """One run's metrics: values (percent), ``n``, ``excluded``, ``ci95``, ``by_topic``."""
    ids, s, c = _tables(rows)
    total = s.sum(axis=0), c.sum(axis=0)
    values = _percent(*total)
    result: dict = {metric: _round(values[m]) for m, metric in enumerate(METRICS)}
    result["n"] = {metric: int(total[1][m]) for m, metric in enumerate(METRICS)}
    result["excluded"] = {metric: len(rows) - int(total[1][m]) for m, metric in enumerate(METRICS)}
    result["ci95"] = _intervals(*wilson_clustered(s.T, c.T))
    by_topic: dict[str, list[dict]] = {}
    for row in rows:
        by_topic.setdefault(str(row.get("topic", "unknown")), []).append(row)
    result["by_topic"] = {}
    for topic in sorted(by_topic):
        _, ts, tc = _tables(by_topic[topic])
        topic_values = _percent(ts.sum(axis=0), tc.sum(axis=0))
        result["by_topic"][topic] = {metric: _round(topic_values[m]) for m, metric in enumerate(METRICS)}
    return result


def paired_difference(rows_a: list[dict], rows_b: list[dict]) -> dict:
    """A minus B per metric (percentage points) on the ids both share: ``{metric: {"diff", "ci95"}}``."""
    ids_a, s_a, c_a = _tables(rows_a)
    ids_b, s_b, c_b = _tables(rows_b)
    shared = sorted(set(ids_a) & set(ids_b))
    pick_a = [ids_a.index(i) for i in shared]
    pick_b = [ids_b.index(i) for i in shared]
    s = np.stack([s_a[pick_a].T, s_b[pick_b].T]) if shared else np.zeros((2, len(METRICS), 0))
    c = np.stack([c_a[pick_a].T, c_b[pick_b].T]) if shared else np.zeros((2, len(METRICS), 0))
    d, lo, hi = newcombe_paired(s, c)
    intervals = _intervals(lo, hi)
    return {metric: {"diff": _round(100 * d[m]), "ci95": intervals[metric]} for m, metric in enumerate(METRICS)}


def compare(runs: dict[str, list[dict]]) -> dict:
    """The report: ``{"runs": {name: summarize(...)}, "paired": {"B-A": ...}}`` for every later run B and earlier A."""
    names = list(runs)
    report = {"runs": {name: summarize(runs[name]) for name in names}, "paired": {}}
    for i, j in itertools.combinations(range(len(names)), 2):
        later, earlier = names[j], names[i]
        report["paired"][f"{later}-{earlier}"] = paired_difference(runs[later], runs[earlier])
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
