"""CDPA advantage estimators: paper Section 2.4 Eq. 3, Appendix D's process and outcome supervision, PURE's min-form.

``cdpa_advantages(token_rewards, action_mask, group_size, mode, eps)`` turns per-token rewards r_{i,t} = r_i^j
(the PRM score of the step holding token t, see ``cdra_plugin.cdpa.align``) into per-token advantages A_{i,t}.
Rows ``g*G .. (g+1)*G - 1`` of the (B, T) batch are the G responses to prompt g. Pure torch, CPU or CUDA, no
Python loop over tokens or responses, float32 at least inside (float64 stays float64).

Modes (``mu``/``sigma``: mean and standard deviation over the stated set):

- ``token_position`` (Eq. 3): for every position t, over the responses of the group that have a valid token at t:
  A_{i,t} = (r_{i,t} - mu_t) / (sigma_t + eps). Padding never counts. Unlike the host's ``group_norm``, which
  normalises one scalar per response, the baseline here moves along the sequence.
- ``group_steps``: mu/sigma over all step scores r_i^j of the group (each step once), A_{i,t} = normalised score of
  the step holding t.
- ``process`` (Appendix D, process supervision): A_{i,t} = sum over the steps j >= step(t) of the response of the
  group-normalised step scores (same normalisation as ``group_steps``).
- ``min_form`` (PURE's min-form credit, "Stop Summation: Min-Form Credit Assignment Is All Process Reward Model
  Needs for Reasoning", arXiv 2504.15275): with z_i^j the group-normalised step scores (as in ``group_steps``), the
  return of step j is the minimum of those from j on, A_{i,t} = min over steps k >= step(t) of z_i^k. A step is worth
  no more than the worst step it leads to, so adding or repeating good steps after a bad one cannot raise it (the
  suffix sum of ``process`` rewards every extra good step).
- ``outcome`` (Appendix D, outcome supervision = GRPO): R_i, an aggregate of the response's step scores,
  normalised within the group and broadcast to all its tokens. ``outcome_aggregation`` takes
  ``cdra_plugin.cdpa.aggregation``'s names (its docstring is the reference for what each can be gamed by):
  ``min`` (default: the response's lowest step score; splitting, padding, repeating or reordering steps cannot raise
  it, and a short answer of one safe step scores as well as a long one whose steps are all as good),
  ``weighted_mean`` (the mean of r_{i,t} over the response's tokens, each step weighed by its tokens: splitting
  cannot change it, padding the best step with any tokens and shrinking the worst raise it), ``mean`` (of the step
  scores: splitting good steps dilutes a bad one, repeating the best raises it) or ``sum`` (the paper's R_dense: more
  steps earn more, so GRPO on it learns to fragment). The previous release's ``token_mean`` is read as
  ``weighted_mean`` with a FutureWarning.

Conventions, shared by all modes:

- sigma is the unbiased estimator (``torch.std``'s default, correction = 1), as OpenRLHF 0.11.2's ``group_norm``
  uses (``rewards.std(-1)`` in ``experience_maker.py``); the host adds 1e-9, here ``eps`` (default 1e-6).
- A set with fewer than two members (a "lone" position or group) or whose values are all equal (sigma = 0) gives
  A = 0. Equality is exact: values are shifted by one member of their set before the sums, so equal values give
  sigma exactly 0 (a std around the floating-point mean can be 1e-17 and would turn into a meaningless +-1e-11).
  Outcome rewards R_i are sums computed here, so they count as equal when sigma <= 1e-5 * max(1, |R|) (the same
  step scores summed in another order can differ in their last bits).
- A row whose ``action_mask`` is all zero (a dropped sample, e.g. a failed PRM call) takes no part: its
  advantages are zero and it counts in no mean or std. Masked positions get A = 0; their rewards and step ids are
  never read, so they may hold anything (NaN included). A non-finite reward at a valid position is an error.
- ``step_ids`` (B, T) long gives the step index of each token (``cdra_plugin.cdpa.align.align_steps``). A step is a
  (row, step id) pair with at least one valid token; its score is the reward of its tokens, which must all be
  equal (r_{i,t} = r_i^j), else ValueError. Step ids need not be contiguous or sorted; they index a (B, max id + 1)
  table, so they must be small non-negative integers. Required by every mode but ``token_position``.

Stats (all Python floats; a fraction with an empty denominator is 0.0):

- ``zero_adv_group_frac``: of the groups with at least one valid response, the fraction whose outcome-level
  advantage is all zero (fewer than two valid responses, or all outcome rewards R_i equal): the paper's
  "zero-advantage problem", which ``outcome`` mode suffers from and the step modes address. Needs ``step_ids``.
- ``zero_adv_token_frac``: fraction of valid tokens whose advantage in the chosen mode is exactly 0.
- ``mean_steps``: mean number of steps per valid response. Needs ``step_ids``.
- ``dropped_response_frac``: fraction of rows with an all-zero mask.
- ``lone_position_frac``, ``zero_std_position_frac`` (``token_position``): of the (group, position) pairs with at
  least one valid token, those with exactly one, and those with two or more all-equal rewards.
- ``flat_step_group_frac`` (``group_steps``, ``process``, ``min_form``): of the groups with at least one step, those
  whose step scores give A = 0 everywhere (one step in all, or all step scores equal).

    advantages, stats = cdpa_advantages(rewards, mask, group_size=8, step_ids=ids)   # Eq. 3
"""

import math
from typing import NamedTuple

import torch

from cdra_plugin.cdpa.aggregation import DEFAULT_AGGREGATION, check_aggregation

MODES = ("token_position", "group_steps", "process", "min_form", "outcome")
OUTCOME_EQUAL_RTOL = 1e-5


class _Steps(NamedTuple):
    scores: torch.Tensor  # (B, S) step score, 0 where absent
    present: torch.Tensor  # (B, S) bool: the row has a valid token with this step id
    index: torch.Tensor  # (B, T) long step id per token, S (a spare column) on masked positions


class _Normalised(NamedTuple):
    z: torch.Tensor  # normalised values, 0 outside the valid set and where the set is lone or flat
    count: torch.Tensor  # members per set (keepdim)
    flat: torch.Tensor  # bool per set (keepdim): >= 2 members, sigma = 0 (all equal)


def _count_and_first(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Members per set along dim 1 (in ``values``' dtype) and the first valid value of each set (entry 0 when
    none), both keepdim. Byte arithmetic instead of ``sum``/``argmax`` on the bool mask: those upcast it to int64
    or scan a strided middle dim, and cost as much as the rest of Eq. 3 on the CPU (``scripts/bench_advantage.py``).
    The first valid entry is the one with the largest weight k, k - 1, ..., 1.
    """
    k = valid.shape[1]
    mask = valid.view(torch.uint8) if k < 256 else valid.long()  # a uint8 sum of k < 256 ones cannot overflow
    weights = torch.arange(k, 0, -1, dtype=mask.dtype, device=valid.device).view((1, k) + (1,) * (valid.dim() - 2))
    count = mask.sum(1, keepdim=True, dtype=mask.dtype).to(values.dtype)
    first = k - (mask * weights).amax(1, keepdim=True).long()
    return count, values.gather(1, first.clamp_(max=k - 1))


def _group_normalise(values: torch.Tensor, valid: torch.Tensor, eps: float, rtol: float = 0.0) -> _Normalised:
    """Normalise ``values`` over dim 1 among the ``valid`` entries (others may hold anything, NaN included).

    Values are shifted by the first member of their set before the sums, so a set of equal values has sigma exactly
    0 (no rounding residue) and the one-pass variance is well conditioned (|shifted value| <= spread of the set).
    """
    invalid = ~valid
    count, ref = _count_and_first(values, valid)
    c = (values - ref).masked_fill_(invalid, 0)
    s1 = c.sum(1, keepdim=True)
    s2 = (c * c).sum(1, keepdim=True)
    if not math.isfinite(float(s2.sum())):  # a NaN/Inf anywhere in a set makes its sum of squares non-finite
        raise ValueError("token_rewards has NaN or Inf (or values so large their squares overflow) at valid positions")
    mean = s1 / count.clamp(min=1)
    sigma = ((s2 - s1 * mean) / (count - 1).clamp(min=1)).clamp(min=0).sqrt()
    flat = (sigma <= rtol * ref.abs().clamp(min=1) if rtol else sigma == 0) & (count >= 2)
    scale = (sigma + eps).reciprocal_().masked_fill_((count < 2) | flat, 0)  # a lone or flat set gives A = 0
    z = c.sub_(mean).mul_(scale).masked_fill_(invalid, 0)  # in place: c is not needed any more
    return _Normalised(z, count, flat)


def _step_table(r: torch.Tensor, m: torch.Tensor, step_ids: torch.Tensor) -> _Steps:
    """Per-(row, step) scores by a scatter along dim 1 into a (B, S + 1) table; masked tokens go to column S.

    Each step's tokens are reduced by both max and min: equal means consistent, and a NaN/Inf shows up in them.
    """
    if step_ids.shape != r.shape:
        raise ValueError(f"step_ids must be shaped like token_rewards {tuple(r.shape)}, got {tuple(step_ids.shape)}")
    if step_ids.dtype.is_floating_point or step_ids.dtype == torch.bool:
        raise TypeError(f"step_ids must be an integer tensor, got {step_ids.dtype}")
    index = torch.where(m, step_ids.to(r.device, torch.long), 0)
    low, high = (int(x) for x in index.aminmax()) if index.numel() else (0, 0)
    if low < 0:
        raise ValueError("step_ids must be >= 0 at valid (action_mask) positions")
    n_slots = high + 1
    index.masked_fill_(~m, n_slots)
    shape = (r.shape[0], n_slots + 1)
    hi = torch.full(shape, float("-inf"), dtype=r.dtype, device=r.device).scatter_reduce_(1, index, r, "amax")
    lo = torch.full(shape, float("inf"), dtype=r.dtype, device=r.device).scatter_reduce_(1, index, r, "amin")
    hi, lo = hi[:, :n_slots], lo[:, :n_slots]
    touched = (hi != float("-inf")) | (lo != float("inf"))  # NaN compares unequal: touched
    if bool((touched & ~(torch.isfinite(hi) & torch.isfinite(lo))).any()):
        raise ValueError("token_rewards has NaN or Inf at valid (action_mask) positions")
    mixed = touched & (hi != lo)
    if bool(mixed.any()):
        row, step = (int(x) for x in mixed.nonzero()[0])
        raise ValueError(
            f"token_rewards differ within step {step} of row {row} (values {float(lo[row, step])} .. "
            f"{float(hi[row, step])}): every token of a step must carry the step's score r_i^j"
        )
    return _Steps(torch.where(touched, hi, 0), touched, index)


def _outcome(
    steps: _Steps, r: torch.Tensor, m: torch.Tensor, n_groups: int, aggregation: str, eps: float
) -> _Normalised:
    """Outcome rewards R_i, normalised over the valid responses of each group: z is (n_groups, G, 1)."""
    n_steps = steps.present.sum(1)
    if aggregation == "min":
        outcome = torch.where(steps.present, steps.scores, math.inf).amin(1).masked_fill_(n_steps == 0, 0)
    elif aggregation == "weighted_mean":
        outcome = torch.where(m, r, 0).sum(1) / m.sum(1).clamp(min=1)
    else:
        total = steps.scores.sum(1)
        outcome = total / n_steps.clamp(min=1) if aggregation == "mean" else total
    valid = (n_steps > 0).reshape(n_groups, -1, 1)
    return _group_normalise(outcome.reshape(n_groups, -1, 1), valid, eps, rtol=OUTCOME_EQUAL_RTOL)


def _token_position(r: torch.Tensor, m: torch.Tensor, n_groups: int, eps: float, stats: dict) -> torch.Tensor:
    shape = (n_groups, r.shape[0] // n_groups, r.shape[1])
    norm = _group_normalise(r.reshape(shape), m.reshape(shape), eps)
    occupied = (norm.count >= 1).sum()
    stats["lone_position_frac"] = _frac((norm.count == 1).sum(), occupied)
    stats["zero_std_position_frac"] = _frac(norm.flat.sum(), occupied)
    return norm.z.reshape(r.shape)


def _step_modes(steps: _Steps, n_groups: int, mode: str, eps: float, stats: dict) -> torch.Tensor:
    n_rows, n_slots = steps.scores.shape
    norm = _group_normalise(steps.scores.reshape(n_groups, -1), steps.present.reshape(n_groups, -1), eps)
    stats["flat_step_group_frac"] = _frac(((norm.count == 1) | norm.flat).sum(), (norm.count >= 1).sum())
    z = norm.z.reshape(n_rows, n_slots)
    if mode == "process":
        z = z.flip(1).cumsum(1).flip(1)  # suffix sums: steps at or after each step
    elif mode == "min_form":  # suffix minima; absent steps (+inf) never win, and only present ones are read
        z = torch.where(steps.present, z, math.inf).flip(1).cummin(1).values.flip(1)
    return torch.nn.functional.pad(z, (0, 1)).gather(1, steps.index)  # the spare column S reads 0 for padding


def _frac(num, den) -> float:
    den = float(den)
    return float(num) / den if den > 0 else 0.0


def _check(token_rewards, action_mask, group_size, mode, eps, step_ids) -> int:
    if mode not in MODES:
        raise ValueError(f"unknown CDPA mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "token_position" and step_ids is None:
        raise ValueError(f"mode {mode!r} needs step_ids (B, T): the step index of each token (align.align_steps)")
    if not token_rewards.dtype.is_floating_point:
        raise TypeError(f"token_rewards must be a floating-point tensor, got {token_rewards.dtype}")
    if token_rewards.dim() != 2 or action_mask.shape != token_rewards.shape:
        raise ValueError(
            f"token_rewards and action_mask must both be (B, T); got {tuple(token_rewards.shape)} and "
            f"{tuple(action_mask.shape)}"
        )
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"group_size must be an int >= 2 (the responses per prompt normalised together), got {group_size!r}"
        )
    if token_rewards.shape[0] % group_size:
        raise ValueError(
            f"batch size {token_rewards.shape[0]} is not a multiple of group_size {group_size}: rows "
            f"g*G .. (g+1)*G-1 must be the G responses to prompt g"
        )
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return token_rewards.shape[0] // group_size


def cdpa_advantages(
    token_rewards: torch.Tensor,
    action_mask: torch.Tensor,
    group_size: int,
    mode: str = "token_position",
    eps: float = 1e-6,
    *,
    step_ids: torch.Tensor | None = None,
    outcome_aggregation: str = DEFAULT_AGGREGATION,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token CDPA advantages (module docstring for the modes, conventions and stats).

    token_rewards: (B, T) float, r_{i,t}; action_mask: (B, T) bool or 0/1; B = n_groups * group_size.
    step_ids: (B, T) long, keyword-only; required unless ``mode == "token_position"``.
    Returns ``(advantages (B, T) in token_rewards' dtype, zero where the mask is zero; stats)``.
    """
    n_groups = _check(token_rewards, action_mask, group_size, mode, eps, step_ids)
    outcome_aggregation = check_aggregation(outcome_aggregation, "outcome_aggregation")
    work = torch.promote_types(token_rewards.dtype, torch.float32)
    m = action_mask.to(token_rewards.device).bool()
    r = token_rewards.to(work)  # masked positions are never read: every reduction below selects by m
    stats: dict[str, float] = {}
    steps = _step_table(r, m, step_ids) if step_ids is not None else None
    outcome = _outcome(steps, r, m, n_groups, outcome_aggregation, eps) if steps is not None else None
    if mode == "token_position":
        adv = _token_position(r, m, n_groups, eps, stats)  # already 0 where the mask is 0
    elif mode == "outcome":
        adv = torch.where(m, outcome.z.reshape(-1, 1), 0)
    else:
        adv = _step_modes(steps, n_groups, mode, eps, stats)  # 0 where the mask is 0

    valid_tokens = torch.count_nonzero(m)
    rows_valid = m.view(torch.uint8).amax(1) > 0 if m.shape[1] else m.any(1)  # amax: ~30x faster than any(1)
    stats["zero_adv_token_frac"] = _frac(valid_tokens - torch.count_nonzero(adv), valid_tokens)
    stats["dropped_response_frac"] = _frac((~rows_valid).sum(), rows_valid.numel())
    if outcome is not None:
        groups_with_valid = outcome.count.reshape(-1) >= 1
        all_zero = ((outcome.count < 2) | outcome.flat).reshape(-1)
        stats["zero_adv_group_frac"] = _frac((all_zero & groups_with_valid).sum(), groups_with_valid.sum())
        stats["mean_steps"] = _frac(steps.present.sum(), rows_valid.sum())
    return adv.to(token_rewards.dtype), stats
