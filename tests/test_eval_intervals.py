"""The report's 95% intervals (cdra_plugin.eval.metrics) keep their promise: simulated evaluations, thousands per
cell, with several correlated samples per prompt, cover the true rate at least 93% of the time at 2%, 50% and 95%
with 10, 50 and 300 prompts, without being wider than they need; the vectorised code equals a plain loop."""

import math
import random
from statistics import NormalDist

import numpy as np
import pytest

from cdra_plugin.eval.metrics import MIN_SPREAD, newcombe_paired, t_quantile, wilson_clustered

EVALUATIONS = 2000  # per cell
G, RHO = 4, 0.3  # samples per prompt; their correlation (intraclass, beta-binomial)
PROMPTS = (10, 50, 300)
RATES = (0.02, 0.5, 0.95)


def simulate(rng, p: float, prompts: int, evaluations: int = EVALUATIONS, g: int = G, rho: float = RHO):
    """Per evaluation and prompt, Yes counts of ``g`` samples whose Yes rate is the prompt's own, drawn from a beta
    distribution of mean ``p``: two samples of one prompt agree more often than two of different prompts."""
    rate = rng.beta(p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho, size=(evaluations, prompts))
    return rng.binomial(g, rate).astype(float), np.full((evaluations, prompts), float(g))


def test_t_quantiles_match_the_published_table():
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 49: 2.010,
             120: 1.980, 299: 1.968}  # fmt: skip
    got = t_quantile(np.array(list(table)))
    assert np.allclose(got, list(table.values()), atol=1.5e-3)


def test_rate_intervals_cover_the_true_rate_in_every_cell():
    rng = np.random.default_rng(2024)
    cells = {}
    for p in RATES:
        for prompts in PROMPTS:
            s, c = simulate(rng, p, prompts)
            lo, hi = wilson_clustered(s, c)
            # what an interval that knows the design effect would span: 2 t sqrt(p (1 - p) deff / N)
            oracle = 2 * t_quantile(prompts - 1) * math.sqrt(p * (1 - p) * (1 + (G - 1) * RHO) / (prompts * G))
            cells[p, prompts] = (np.mean((lo <= p) & (p <= hi)), np.mean(hi - lo) / oracle)
    print("\ncoverage (mean width / oracle width) of the 95% interval,", EVALUATIONS, "evaluations per cell")
    print("p \\ prompts " + "".join(f"{k:>16}" for k in PROMPTS))
    for p in RATES:
        print(f"{p:<12}" + "".join(f"{cells[p, k][0]:>9.3f} ({cells[p, k][1]:.2f})" for k in PROMPTS))
    assert all(coverage >= 0.93 for coverage, _ in cells.values()), cells
    # not by being wide: with enough prompts the width is what knowing the true design effect would give
    assert all(ratio < 1.15 for (p, k), (_, ratio) in cells.items() if k == 300), cells


def test_paired_intervals_cover_the_true_difference():
    # Two runs share each prompt's difficulty z: a rate Phi(mu + sigma z) per prompt and run, whose mean over prompts
    # is Phi(mu / sqrt(1 + sigma^2)) exactly, so the true difference is known.
    rng, sigma, normal = np.random.default_rng(7), 0.8, NormalDist()
    phi = np.vectorize(normal.cdf)
    for (p_a, p_b), prompts in [((0.5, 0.5), 10), ((0.3, 0.5), 50), ((0.02, 0.08), 300), ((0.9, 0.95), 50)]:
        z = rng.normal(size=(EVALUATIONS, prompts))
        counts = np.full(z.shape, float(G))
        yes = [rng.binomial(G, phi(normal.inv_cdf(p) * math.sqrt(1 + sigma**2) + sigma * z)) for p in (p_a, p_b)]
        _, lo, hi = newcombe_paired(np.stack(yes).astype(float), np.stack([counts, counts]))
        coverage = np.mean((lo <= p_a - p_b) & (p_a - p_b <= hi))
        assert coverage >= 0.93, (p_a, p_b, prompts, coverage)


def reference_interval(s: list[float], c: list[float]) -> tuple[float, float] | None:
    """wilson_clustered for one metric, written out as a loop."""
    counted = [(si, ci) for si, ci in zip(s, c, strict=True) if ci > 0]
    k = len(counted)
    if k == 0:
        return None
    if k == 1:
        return 0.0, 1.0
    n = sum(ci for _, ci in counted)
    p = sum(si for si, _ in counted) / n
    rarer = sum(1 for si, ci in counted if (si > 0 if p <= 0.5 else si < ci))
    if rarer < MIN_SPREAD:
        deff = sum(ci * ci for _, ci in counted) / n
    else:
        spread = k / (k - 1) * sum((si - p * ci) ** 2 for si, ci in counted) / n**2
        deff = max(1.0, spread / (p * (1 - p) / n))
    m, t = n / deff, float(t_quantile(k - 1))
    centre = (p + t * t / (2 * m)) / (1 + t * t / m)
    half = t / (1 + t * t / m) * math.sqrt(p * (1 - p) / m + t * t / (4 * m * m))
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_intervals_equal_a_plain_loop(seed):
    rng = random.Random(seed)
    runs = []
    for _ in range(40):
        k = rng.choice([1, 2, 3, 7, 30])
        c = [float(rng.choice([0, 1, 3, 4])) for _ in range(k)]
        p = rng.choice([0.0, 0.05, 0.5, 0.97, 1.0])
        runs.append(([float(sum(rng.random() < p for _ in range(int(ci)))) for ci in c], c))
    for s, c in runs:
        lo, hi = wilson_clustered(np.array(s), np.array(c))
        expected = reference_interval(s, c)
        if expected is None:
            assert np.isnan(lo) and np.isnan(hi)
        else:
            assert (lo, hi) == pytest.approx(expected, abs=1e-12)
    # and the batch axis changes nothing: the same runs at once (padded with uncounted prompts)
    width = max(len(c) for _, c in runs)
    s = np.array([s + [0.0] * (width - len(s)) for s, _ in runs])
    c = np.array([c + [0.0] * (width - len(c)) for _, c in runs])
    batch = wilson_clustered(s, c)
    for i, (si, ci) in enumerate(runs):
        one = wilson_clustered(np.array(si), np.array(ci))
        assert np.allclose([batch[0][i], batch[1][i]], one, equal_nan=True)


@pytest.mark.parametrize("seed", range(5))
def test_paired_interval_equals_newcombes_formula_by_hand(seed):
    rng = random.Random(seed)
    k = rng.choice([2, 5, 40])
    c = [float(rng.choice([1, 2, 4])) for _ in range(k)]
    s_a = [float(sum(rng.random() < 0.4 for _ in range(int(ci)))) for ci in c]
    s_b = [float(min(ci, si + (rng.random() < 0.3))) for si, ci in zip(s_a, c, strict=True)]
    d, lo, hi = newcombe_paired(np.array([s_a, s_b]), np.array([c, c]))
    n = sum(c)
    p_a, p_b = sum(s_a) / n, sum(s_b) / n
    (l_a, u_a), (l_b, u_b) = reference_interval(s_a, c), reference_interval(s_b, c)
    r_a = [si - p_a * ci for si, ci in zip(s_a, c, strict=True)]
    r_b = [si - p_b * ci for si, ci in zip(s_b, c, strict=True)]
    norm = math.sqrt(sum(x * x for x in r_a) * sum(y * y for y in r_b))
    phi = sum(x * y for x, y in zip(r_a, r_b, strict=True)) / norm if norm else 0.0
    below = math.sqrt((p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2)
    above = math.sqrt((u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2)
    assert (d, lo, hi) == pytest.approx((p_a - p_b, max(-1, p_a - p_b - below), min(1, p_a - p_b + above)))
