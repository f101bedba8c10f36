"""The gateway's scalar reward: how one response's step scores r_1..r_T become the ``rewards`` value (paper Sec. 2.3).

``--reward-aggregation`` (the gateway's; CDPA's own ``--cdpa.*`` outcome aggregation is a different option):

- ``length_mean`` (default): the mean of the step scores weighted by each step's length (``step_length``: the
  non-blank characters of the text the PRM judged, markers excluded), i.e. the average reward per character of
  the response, the text analogue of the mean of CDPA's token rewards r_{i,t} = r_i^{step(t)} (Eq. 3). Splitting
  a step (at any blank) into pieces that score like the whole leaves it unchanged, and so does merging steps;
  empty or marker-only steps weigh nothing; fragmenting the good parts of a response does not dilute its bad
  parts (it does under ``mean``). Blanks do not count, so where a split falls cannot shift weight either.
- ``mean``: the plain mean over steps. Splitting cannot multiply it, but a policy can still dilute one bad step by
  splitting its good steps into many short ones.
- ``sum``: the paper's literal R_dense = sum_j r_j. **Splitting raises it**: with a PRM that gives ~0.5 to any
  plausible step, the same text in 8 steps earns 8x the reward of one step (32x at the ``--max-steps`` cap), and
  GRPO on this reward learns to fragment. Use it to reproduce the paper's "GRPO (with PRM)" row, knowingly.

When every step has an empty text (a response with no content, scored -1 without a PRM call) ``length_mean`` has
no weights and is the plain mean.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

REWARD_AGGREGATIONS = ("length_mean", "mean", "sum")
DEFAULT_REWARD_AGGREGATION = "length_mean"


def check_aggregation(name: str) -> str:
    if name not in REWARD_AGGREGATIONS:
        raise ValueError(f"--reward-aggregation must be one of {', '.join(REWARD_AGGREGATIONS)}, got {name!r}")
    return name


def step_length(text: str) -> int:
    """The weight of a step under ``length_mean``: its non-blank characters."""
    return len("".join(text.split()))


def step_average(scores: Sequence[float], lengths: Sequence[int], how: str) -> float:
    """The per-step average the reward and the [0, 1] score are built from: length-weighted for ``length_mean``."""
    if not scores:
        raise ValueError("a reward needs at least one step score")
    mean, total = statistics.fmean(scores), sum(lengths)
    if how != "length_mean" or total == 0:
        return mean
    # the plain mean plus the weighted deviations from it: exact when all scores are equal (one step included)
    return mean + math.fsum((s - mean) * n for s, n in zip(scores, lengths, strict=True)) / total


def aggregate(scores: Sequence[float], lengths: Sequence[int], how: str) -> float:
    """The scalar reward of one response: ``scores[j]`` of step j, ``lengths[j]`` its ``step_length``."""
    return float(sum(scores)) if how == "sum" else step_average(scores, lengths, how)
