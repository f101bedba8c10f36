"""CDPA advantages against slow float64 references written plainly, plus property tests and a hand-worked Eq. 3."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cdra_plugin.cdpa.advantage import MODES, OUTCOME_EQUAL_RTOL, cdpa_advantages
from cdra_plugin.cdpa.aggregation import AGGREGATIONS

EPS = 1e-6

# ---------------------------------------------------------------- plain references (float64, loops, no tricks)


def _normalise(values: list[float], eps: float, rtol: float = 0.0) -> list[float]:
    """(v - mean) / (unbiased std + eps); zeros for fewer than two values or all equal (within rtol)."""
    if len(values) < 2:
        return [0.0] * len(values)
    spread = max(values) - min(values)
    if spread <= rtol * max(1.0, max(abs(v) for v in values)):
        return [0.0] * len(values)
    mu, sd = statistics.fmean(values), statistics.stdev(values)
    return [(v - mu) / (sd + eps) for v in values]


def ref_token_position(r, m, g, eps=EPS):
    b, t = r.shape
    out = torch.zeros(b, t, dtype=torch.float64)
    for grp in range(b // g):
        rows = range(grp * g, (grp + 1) * g)
        for pos in range(t):
            valid = [i for i in rows if m[i, pos]]
            for i, a in zip(valid, _normalise([float(r[i, pos]) for i in valid], eps), strict=True):
                out[i, pos] = a
    return out


def ref_step_scores(r, m, ids):
    """{row: {step: score}} from the valid tokens (every token of a step carries the step's score)."""
    scores = {}
    for i in range(r.shape[0]):
        row = {}
        for pos in range(r.shape[1]):
            if m[i, pos]:
                row[int(ids[i, pos])] = float(r[i, pos])
        scores[i] = row
    return scores


def ref_step_modes(r, m, ids, g, mode, eps=EPS):
    scores = ref_step_scores(r, m, ids)
    z = {}
    for grp in range(r.shape[0] // g):
        keys = [(i, j) for i in range(grp * g, (grp + 1) * g) for j in sorted(scores[i])]
        z.update(zip(keys, _normalise([scores[i][j] for i, j in keys], eps), strict=True))
    out = torch.zeros(r.shape, dtype=torch.float64)
    for i in range(r.shape[0]):
        for pos in range(r.shape[1]):
            if m[i, pos]:
                j = int(ids[i, pos])
                later = [z[i, k] for k in scores[i] if k >= j]  # this step and every later step of the response
                if mode == "group_steps":
                    out[i, pos] = z[i, j]
                elif mode == "process":
                    out[i, pos] = sum(later)
                else:  # min_form
                    out[i, pos] = min(later)
    return out


def ref_outcome(r, m, ids, g, aggregation="min", eps=EPS):
    scores = ref_step_scores(r, m, ids)
    out = torch.zeros(r.shape, dtype=torch.float64)
    for grp in range(r.shape[0] // g):
        rows = [i for i in range(grp * g, (grp + 1) * g) if scores[i]]
        totals = [sum(scores[i].values()) for i in rows]
        if aggregation == "mean":
            totals = [tot / len(scores[i]) for tot, i in zip(totals, rows, strict=True)]
        if aggregation == "min":
            totals = [min(scores[i].values()) for i in rows]
        if aggregation == "weighted_mean":  # every valid token's reward, one at a time
            totals = [sum(float(r[i, t]) for t in range(r.shape[1]) if m[i, t]) / int(m[i].sum()) for i in rows]
        for i, a in zip(rows, _normalise(totals, eps, OUTCOME_EQUAL_RTOL), strict=True):
            out[i, m[i]] = a
    return out


def reference(r, m, ids, g, mode, aggregation="min"):
    if mode == "token_position":
        return ref_token_position(r, m, g)
    if mode == "outcome":
        return ref_outcome(r, m, ids, g, aggregation)
    return ref_step_modes(r, m, ids, g, mode)


# ---------------------------------------------------------------- random batches as an experience maker builds them

TIES = torch.tensor([-1.0, -0.5, 0.0, 0.3, 0.5, 0.8, 1.0])


def make_batch(gen, n_groups, g, t, ties=True, dropped=0.1, left_pad=False, dtype=torch.float32):
    """Rewards broadcast from step scores, right (or left) padding, dropped rows, garbage at masked positions."""
    b = n_groups * g
    rewards = torch.full((b, t), float("nan"), dtype=dtype)
    ids = torch.full((b, t), 999, dtype=torch.long)  # garbage where masked: must never be read
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        if torch.rand((), generator=gen) < dropped:
            continue
        length = int(torch.randint(1, t + 1, (), generator=gen))
        n_steps = int(torch.randint(1, min(length, 6) + 1, (), generator=gen))
        cuts = torch.randperm(length - 1, generator=gen)[: n_steps - 1] + 1 if length > 1 else torch.tensor([])
        row_ids = torch.zeros(length, dtype=torch.long)
        for c in cuts.tolist():
            row_ids[c:] += 1
        if ties:
            step_scores = TIES[torch.randint(0, len(TIES), (n_steps,), generator=gen)]
        else:
            step_scores = torch.rand(n_steps, generator=gen, dtype=torch.float64) * 2 - 1
        cols = slice(t - length, t) if left_pad else slice(0, length)
        mask[i, cols] = True
        ids[i, cols] = row_ids
        rewards[i, cols] = step_scores[row_ids].to(dtype)
    return rewards, mask, ids


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(6))
def test_matches_float64_reference(mode, seed):
    gen = torch.Generator().manual_seed(seed)
    g = int(torch.randint(2, 7, (), generator=gen))
    r, m, ids = make_batch(
        gen, n_groups=3, g=g, t=int(torch.randint(1, 30, (), generator=gen)), ties=seed % 2 == 0, left_pad=seed == 3
    )
    adv, stats = cdpa_advantages(r, m, g, mode, step_ids=ids)
    assert adv.dtype == torch.float32 and adv.shape == r.shape
    torch.testing.assert_close(adv.double(), reference(r.double(), m, ids, g, mode), atol=2e-5, rtol=1e-5)
    assert torch.isfinite(adv).all()
    valid = int(m.sum())
    assert stats["zero_adv_token_frac"] == pytest.approx(((adv == 0) & m).sum().item() / max(valid, 1))


@pytest.mark.parametrize("mode", MODES)
def test_float64_input_stays_float64_and_exact(mode):
    gen = torch.Generator().manual_seed(11)
    r, m, ids = make_batch(gen, n_groups=4, g=4, t=25, ties=False, dtype=torch.float64)
    adv, _ = cdpa_advantages(r, m, 4, mode, step_ids=ids)
    assert adv.dtype == torch.float64
    torch.testing.assert_close(adv, reference(r, m, ids, 4, mode), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("seed", range(3))
def test_outcome_aggregation(aggregation, seed):
    gen = torch.Generator().manual_seed(5 + seed)
    r, m, ids = make_batch(gen, n_groups=3, g=4, t=20, ties=seed == 2)
    adv, _ = cdpa_advantages(r, m, 4, "outcome", step_ids=ids, outcome_aggregation=aggregation)
    torch.testing.assert_close(adv.double(), ref_outcome(r.double(), m, ids, 4, aggregation), atol=2e-5, rtol=1e-5)


def test_the_old_aggregation_name_is_read_with_a_warning():
    gen = torch.Generator().manual_seed(4)
    r, m, ids = make_batch(gen, n_groups=2, g=4, t=12, ties=False)
    with pytest.warns(FutureWarning, match="outcome_aggregation token_mean is now called weighted_mean"):
        old, _ = cdpa_advantages(r, m, 4, "outcome", step_ids=ids, outcome_aggregation="token_mean")
    new, _ = cdpa_advantages(r, m, 4, "outcome", step_ids=ids, outcome_aggregation="weighted_mean")
    assert torch.equal(old, new)


@pytest.mark.parametrize("mode", MODES)
def test_many_steps_and_sparse_step_ids(mode):
    # 4 x 80 step slots per group (> 255: the table takes the wide path); ids with gaps, as max_steps never makes
    gen = torch.Generator().manual_seed(9)
    r, m, ids = make_batch(gen, n_groups=2, g=4, t=60, ties=False)
    ids = torch.where(m, ids * 16, ids)
    adv, _ = cdpa_advantages(r, m, 4, mode, step_ids=ids)
    torch.testing.assert_close(adv.double(), reference(r.double(), m, ids, 4, mode), atol=2e-5, rtol=1e-5)


def test_empty_responses_batch():
    r, m = torch.zeros(4, 0), torch.zeros(4, 0, dtype=torch.bool)
    for mode in MODES:
        adv, stats = cdpa_advantages(r, m, 2, mode, step_ids=torch.zeros(4, 0, dtype=torch.long))
        assert adv.shape == (4, 0) and stats["dropped_response_frac"] == 1.0


def test_bf16_rewards_keep_their_dtype():
    gen = torch.Generator().manual_seed(2)
    r, m, ids = make_batch(gen, n_groups=2, g=4, t=16)
    adv, _ = cdpa_advantages(r.bfloat16(), m, 4, "process", step_ids=ids)
    assert adv.dtype == torch.bfloat16
    expected = reference(r.bfloat16().double(), m, ids, 4, "process")
    torch.testing.assert_close(adv.double(), expected, atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------- Eq. 3 by hand


def test_eq3_hand_worked_example():
    # One group of G = 3; row 2 has one token, row 0 has a fourth token nobody else has.
    #   position 0: r = 0.8, 0.2, 0.5 -> mu = 0.5, unbiased var = (0.09 + 0.09 + 0) / 2 = 0.09, sigma = 0.3
    #               A = +-0.3 / (0.3 + 1e-6) = +-0.99999666668, and 0 for row 2
    #   position 1: r = 0.8, 0.5 (row 2 is padding) -> mu = 0.65, var = 2 * 0.15^2 / 1 = 0.045,
    #               sigma = 0.21213203436, A = +-0.15 / (0.21213203436 + 1e-6) = +-0.70710344786
    #               (counting row 2's padding as a 0 would give mu = 0.4333 and flip row 1's sign to +)
    #   position 2: r = 0.2, 0.5 -> same spread as position 1 with the signs swapped
    #   position 3: only row 0 -> lone position -> A = 0
    r = torch.tensor([[0.8, 0.8, 0.2, 0.2], [0.2, 0.5, 0.5, 0.0], [0.5, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    adv, stats = cdpa_advantages(r, m, 3)
    a, b = 0.99999666668, 0.70710344786
    expected = torch.tensor([[a, b, -b, 0.0], [-a, -b, b, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    assert stats["lone_position_frac"] == pytest.approx(1 / 4)
    assert stats["zero_std_position_frac"] == 0.0
    assert adv[0, 3] == 0  # the lone token is exactly 0 (row 2's position-0 token is 0 up to rounding)
    assert stats["zero_adv_token_frac"] == pytest.approx(((adv == 0) & m.bool()).sum().item() / 8)
    assert "mean_steps" not in stats and "zero_adv_group_frac" not in stats  # no step_ids given


def test_zero_std_positions_and_equal_values_that_do_not_sum_exactly():
    # 0.1 * 3 != 0.3 in floating point: a std computed around the mean would be ~1e-17, not 0
    r = torch.full((3, 5), 0.1)
    m = torch.ones(3, 5, dtype=torch.bool)
    adv, stats = cdpa_advantages(r, m, 3)
    assert (adv == 0).all()
    assert stats["zero_std_position_frac"] == 1.0 and stats["zero_adv_token_frac"] == 1.0


def test_splitting_a_step_raises_only_the_sum():
    """The policy's fragmenting trick: response 0 writes its one good step as two. Only R_dense (sum) rewards it."""
    r = torch.tensor([[0.8, 0.8, 0.8, 0.8], [0.8, 0.8, 0.8, 0.8]])
    m = torch.ones(2, 4, dtype=torch.bool)
    ids = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])  # same text, one marker more in response 0
    for aggregation, split_wins in (("min", False), ("weighted_mean", False), ("mean", False), ("sum", True)):
        adv, _ = cdpa_advantages(r, m, 2, "outcome", step_ids=ids, outcome_aggregation=aggregation)
        assert bool((adv[0] > 0).all()) is split_wins and bool((adv[0] == 0).all()) is not split_wins, aggregation


# ---------------------------------------------------------------- stats


def test_zero_advantage_groups_and_step_diagnostics():
    # group 0: two responses with the same outcome (0.9 + 0.1 = 0.1 + 0.9) but different reasoning;
    # group 1: different outcomes. Outcome supervision gives group 0 nothing; Eq. 3 still separates its steps.
    r = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9], [0.5, 0.5, 0.5, 0.0], [-0.5, -0.5, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    ids = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    outcome, s_out = cdpa_advantages(r, m, 2, "outcome", step_ids=ids)
    tokenwise, s_tok = cdpa_advantages(r, m, 2, "token_position", step_ids=ids)
    assert (outcome[:2] == 0).all() and (outcome[2:][m[2:]] != 0).all()
    assert (tokenwise[:2] != 0).all()
    for s in (s_out, s_tok):
        assert s["zero_adv_group_frac"] == 0.5
        assert s["mean_steps"] == pytest.approx(6 / 4)
        assert s["dropped_response_frac"] == 0.0
    assert s_tok["lone_position_frac"] == pytest.approx(1 / 7)  # group 1 position 2, of 7 occupied positions


def test_dropped_rows_take_no_part():
    gen = torch.Generator().manual_seed(3)
    r, m, ids = make_batch(gen, n_groups=2, g=4, t=12, dropped=0.0)
    m[1] = False  # e.g. its PRM call failed
    m[4:8] = False  # a whole group dropped
    for mode in MODES:
        adv, stats = cdpa_advantages(r, m, 4, mode, step_ids=ids)
        assert (adv[1] == 0).all() and (adv[4:8] == 0).all()
        torch.testing.assert_close(adv.double(), reference(r.double(), m, ids, 4, mode), atol=2e-5, rtol=1e-5)
        assert stats["dropped_response_frac"] == pytest.approx(5 / 8)
        assert stats["zero_adv_group_frac"] == 0.0  # only group 0 has valid responses, and they differ


def test_everything_masked_is_all_zero_without_nan():
    r = torch.full((4, 6), float("nan"))
    m = torch.zeros(4, 6, dtype=torch.bool)
    ids = torch.full((4, 6), -3)
    for mode in MODES:
        adv, stats = cdpa_advantages(r, m, 2, mode, step_ids=ids)
        assert (adv == 0).all()
        assert all(math.isfinite(v) for v in stats.values())
        assert stats["dropped_response_frac"] == 1.0 and stats["zero_adv_token_frac"] == 0.0


def test_process_mode_on_a_single_response_pair():
    # two responses, two steps each: z over {0.9, 0.1, 0.1, 0.9}: mean 0.5, std 0.46188 -> z = +-0.86602
    r = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.9]], dtype=torch.float64)
    m = torch.ones(2, 3, dtype=torch.bool)
    ids = torch.tensor([[0, 1, 1], [0, 1, 1]])
    adv, _ = cdpa_advantages(r, m, 2, "process", step_ids=ids)
    z = 0.4 / (math.sqrt(4 * 0.16 / 3) + EPS)
    # step 0 tokens get z_0 + z_1, step 1 tokens z_1
    expected = torch.tensor([[z - z, -z, -z], [-z + z, z, z]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, atol=1e-12, rtol=0)


def test_min_form_hand_worked_example():
    """PURE's min-form: a step's return is the minimum of the group-normalised step scores from that step on.

    G = 2. Response 0 has steps (0.9, 0.1, 0.5) over tokens (0, 0, 1, 2, 2); response 1 has steps (0.3, 0.7) over
    tokens (0, 1, 1, 1) and one padding position.
      group of step scores {0.9, 0.1, 0.5, 0.3, 0.7}: mu = 2.5 / 5 = 0.5, deviations (0.4, -0.4, 0, -0.2, 0.2),
      unbiased var = (0.16 + 0.16 + 0 + 0.04 + 0.04) / 4 = 0.1, s = sigma + eps = 0.31622776602 + 1e-6 = 0.31622876602
      z = (+a, -a, 0 | -b, +b) with a = 0.4 / s = 1.26490706408, b = 0.2 / s = 0.63245353204
      response 0: step 0 min(+a, -a, 0) = -a; step 1 min(-a, 0) = -a; step 2 min(0) = 0
      response 1: step 0 min(-b, +b) = -b; step 1 min(+b) = +b
    (process would give step 0 of response 0 +a - a + 0 = 0: the sum lets the good first step hide the bad second.)
    """
    r = torch.tensor([[0.9, 0.9, 0.1, 0.5, 0.5], [0.3, 0.7, 0.7, 0.7, 0.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    ids = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 1, 1, 0]])
    adv, stats = cdpa_advantages(r, m, 2, "min_form", step_ids=ids)
    a, b = 1.26490706408, 0.63245353204
    expected = torch.tensor([[-a, -a, -a, 0.0, 0.0], [-b, b, b, b, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, atol=1e-10, rtol=0)
    assert stats["flat_step_group_frac"] == 0.0 and stats["mean_steps"] == 2.5
    process, _ = cdpa_advantages(r, m, 2, "process", step_ids=ids)
    assert abs(float(process[0, 0])) < 1e-12  # the sum's blind spot, above


def test_min_form_cannot_be_raised_by_adding_good_steps():
    """Appending good steps after a bad one raises the process return of the earlier steps, never the min-form one."""
    base = torch.tensor([[0.8, -0.5], [0.2, 0.2]])  # two responses, two one-token steps each
    padded = torch.tensor([[0.8, -0.5, 0.9, 0.9], [0.2, 0.2, 0.0, 0.0]])  # response 0 writes two more good steps
    m_base = torch.ones(2, 2, dtype=torch.bool)
    m_padded = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    ids_base, ids_padded = torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0, 1, 2, 3], [0, 1, 0, 0]])
    for mode, rises in (("process", True), ("min_form", False)):
        before, _ = cdpa_advantages(base, m_base, 2, mode, step_ids=ids_base)
        after, _ = cdpa_advantages(padded, m_padded, 2, mode, step_ids=ids_padded)
        assert bool(after[0, 0] > before[0, 0]) is rises, mode
        assert bool(after[0, 1] > before[0, 1]) is rises, mode


# ---------------------------------------------------------------- errors


def test_errors_are_clear():
    r, m = torch.zeros(4, 3), torch.ones(4, 3)
    ids = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        cdpa_advantages(r, m, 1)
    with pytest.raises(ValueError, match="not a multiple of group_size 3"):
        cdpa_advantages(r, m, 3)
    with pytest.raises(ValueError, match="unknown CDPA mode 'gae'"):
        cdpa_advantages(r, m, 2, "gae")
    for mode in MODES[1:]:
        with pytest.raises(ValueError, match=f"mode '{mode}' needs step_ids"):
            cdpa_advantages(r, m, 2, mode)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        cdpa_advantages(r, m[:, :2], 2)
    with pytest.raises(TypeError, match="floating-point"):
        cdpa_advantages(r.long(), m, 2)
    with pytest.raises(
        ValueError, match="outcome_aggregation must be one of min, mean, weighted_mean, sum; got 'max'"
    ):
        cdpa_advantages(r, m, 2, "outcome", step_ids=ids, outcome_aggregation="max")
    with pytest.raises(ValueError, match="shaped like token_rewards"):
        cdpa_advantages(r, m, 2, "process", step_ids=ids[:, :2])
    with pytest.raises(TypeError, match="integer"):
        cdpa_advantages(r, m, 2, "process", step_ids=ids.float())
    with pytest.raises(ValueError, match=">= 0 at valid"):
        cdpa_advantages(r, m, 2, "process", step_ids=ids - 1)
    bad = r.clone()
    bad[2, 1] = float("inf")
    for mode in MODES:
        with pytest.raises(ValueError, match="NaN or Inf"):
            cdpa_advantages(bad, m, 2, mode, step_ids=ids)
    mixed = r.clone()
    mixed[3, 2] = 0.5
    with pytest.raises(ValueError, match="differ within step 0 of row 3"):
        cdpa_advantages(mixed, m, 2, "group_steps", step_ids=ids)


# ---------------------------------------------------------------- properties


@st.composite
def batches(draw, tie_values=True):
    g = draw(st.integers(2, 5))
    n_groups = draw(st.integers(1, 3))
    t = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    r, m, ids = make_batch(
        gen,
        n_groups,
        g,
        t,
        ties=draw(st.booleans()) if tie_values else False,
        dropped=draw(st.sampled_from([0.0, 0.3])),
        left_pad=draw(st.booleans()),
    )
    return r, m, ids, g


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(MODES))
def test_finite_and_zero_where_masked(batch, mode):
    r, m, ids, g = batch
    adv, stats = cdpa_advantages(r, m, g, mode, step_ids=ids)
    assert torch.isfinite(adv).all()
    assert (adv[~m] == 0).all()
    assert all(math.isfinite(v) for v in stats.values())


@settings(max_examples=60, deadline=None)
@given(batches())
def test_token_position_has_zero_mean_per_position(batch):
    r, m, ids, g = batch
    adv, _ = cdpa_advantages(r, m, g)
    sums = (adv * m).reshape(-1, g, r.shape[1]).sum(1)
    assert sums.abs().max() < 1e-4


@settings(max_examples=40, deadline=None)
@given(batches(), st.sampled_from(MODES), st.integers(1, 9))
def test_invariant_to_padding_length(batch, mode, extra):
    r, m, ids, g = batch
    adv, stats = cdpa_advantages(r, m, g, mode, step_ids=ids)
    b = r.shape[0]
    r2 = torch.cat([r, torch.full((b, extra), 7.0)], 1)
    m2 = torch.cat([m, torch.zeros(b, extra, dtype=torch.bool)], 1)
    ids2 = torch.cat([ids, torch.full((b, extra), 123)], 1)
    adv2, stats2 = cdpa_advantages(r2, m2, g, mode, step_ids=ids2)
    torch.testing.assert_close(adv2[:, : r.shape[1]], adv, atol=1e-6, rtol=0)
    assert (adv2[:, r.shape[1] :] == 0).all()
    assert stats2 == pytest.approx(stats)


@settings(max_examples=40, deadline=None)
@given(batches(), st.sampled_from(MODES), st.randoms(use_true_random=False))
def test_equivariant_to_permutations_within_groups(batch, mode, rnd):
    r, m, ids, g = batch
    perm = []
    for grp in range(r.shape[0] // g):
        rows = list(range(grp * g, (grp + 1) * g))
        rnd.shuffle(rows)
        perm += rows
    perm = torch.tensor(perm)
    adv, _ = cdpa_advantages(r, m, g, mode, step_ids=ids)
    adv_p, _ = cdpa_advantages(r[perm], m[perm], g, mode, step_ids=ids[perm])
    torch.testing.assert_close(adv_p, adv[perm], atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(batches(), st.sampled_from(MODES), st.sampled_from([0.0, 0.7, -1.0]))
def test_all_equal_rewards_give_zero(batch, mode, value):
    r, m, ids, g = batch
    r = torch.where(m, torch.full_like(r, value), r)
    # "mean": equal step scores give equal outcomes whatever the step counts (a sum would differ with them)
    adv, stats = cdpa_advantages(r, m, g, mode, step_ids=ids, outcome_aggregation="mean")
    assert (adv == 0).all()
    assert stats["zero_adv_token_frac"] == (1.0 if m.any() else 0.0)
    assert stats["zero_adv_group_frac"] == (1.0 if m.any() else 0.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(2, 5), st.sampled_from(MODES))
def test_one_token_responses(n_groups, g, mode):
    gen = torch.Generator().manual_seed(n_groups * 10 + g)
    r = torch.rand(n_groups * g, 1, generator=gen)
    m = torch.ones_like(r, dtype=torch.bool)
    adv, _ = cdpa_advantages(r, m, g, mode, step_ids=torch.zeros_like(r, dtype=torch.long))
    expected = reference(r.double(), m, torch.zeros_like(r, dtype=torch.long), g, mode)
    torch.testing.assert_close(adv.double(), expected, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu(mode):
    gen = torch.Generator().manual_seed(7)
    r, m, ids = make_batch(gen, n_groups=8, g=8, t=300, ties=True)
    cpu, s_cpu = cdpa_advantages(r, m, 8, mode, step_ids=ids)
    gpu, s_gpu = cdpa_advantages(r.cuda(), m.cuda(), 8, mode, step_ids=ids.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
    assert s_gpu == pytest.approx(s_cpu)
