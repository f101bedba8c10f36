"""Step alignment of a batch of generated responses: token ids -> (text, steps, step index of every token).

CDPA gives token t of response i the score of the step holding it, r_{i,t} = r_i^{step(t)} (paper Section 2.4,
Steps 2-4). A trainer holds the generated ids of a whole micro-batch; ``align_steps`` returns, per response, exactly
what the per-response path gives,

    text, offsets = decode_with_offsets(tokenizer, ids)            # cdra_plugin.detok
    steps = segment_steps(text, max_steps)                         # cdra_plugin.steps
    step_of_token = token_step_ids(offsets, steps)                 # cdra_plugin.steps

with the work batched: the responses are decoded a group at a time (``cdra_plugin.detok.decode_groups``), and all
step boundaries of a group are found by one binary search of the steps' first characters among the group's token
starts, both in the coordinates of the group's texts laid end to end. Only the segmentation runs per response. A
response whose offsets come from the generic path of ``cdra_plugin.detok`` (not the byte-level tables) is aligned
alone by ``token_step_ids``. ``scripts/bench_advantage.py`` (part a) measures both ways against the naive search.

    >>> aligned = align_steps(tokenizer, [ids_0, ids_1], max_steps=16)   # ids: (T_i,) lists, arrays or tensors
    >>> aligned[0].text, aligned[0].steps, aligned[0].step_of_token      # str, list[Step], (T_0,) LongTensor
"""

import bisect
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from cdra_plugin.detok import DecodedGroup, decode_groups
from cdra_plugin.steps import Step, segment_steps, token_step_ids

_END = np.iinfo(np.int64).max  # a character position after every token


class AlignedResponse(NamedTuple):
    """One response: its decoded ``text``, its ``steps``, and ``step_of_token`` (T,) int64 on the CPU."""

    text: str
    steps: list[Step]
    step_of_token: torch.Tensor


def align_steps(
    tokenizer, batch: Sequence, max_steps: int | None = None, group_tokens: int | None = None
) -> list[AlignedResponse]:
    """Align every response of ``batch`` (B items, each (T_i,) token ids: list, array, or tensor; tensors on one
    device) with its steps, segmented with ``max_steps`` (``segment_steps``). Returns B ``AlignedResponse``, equal
    to the per-response path of the module docstring; the ``step_of_token`` tensors of a group share one buffer.
    ``group_tokens``: tokens per group of responses (``cdra_plugin.detok.decode_groups``; default ``GROUP_TOKENS``).
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (or None), got {max_steps}")
    out = []
    for group in decode_groups(tokenizer, batch, group_tokens):
        all_steps = [segment_steps(text, max_steps) for text in group.texts]
        step_of_token = _step_of_token(group, all_steps)
        out += map(AlignedResponse, group.texts, all_steps, step_of_token)
    return out


def _step_of_token(group: DecodedGroup, all_steps: list[list[Step]]) -> list[torch.Tensor]:
    """Each response's (T_i,) step indices: ``token_step_ids``'s rules, for all tiled responses of the group at once.

    Step k of response r owns the tokens from ``edges[k]`` to the next step's edge: the first token starting at or
    after the step's first character, moved past zero-width tokens (they follow the previous token), or the
    response's first token for k = 0. A step starting after the response's last token start owns none.
    """
    starts, ends, token_start = group.starts, group.ends, group.token_start
    n = len(starts)
    counts = list(map(len, all_steps))
    first = list(itertools.accumulate(counts, initial=0))  # first[r]: row of response r's step 0
    bases = group.text_start[:-1].tolist()
    # each step's first character in the group's texts laid end to end; a sentinel step after all tokens last
    chars = itertools.chain(
        (base + s.start for steps, base in zip(all_steps, bases, strict=True) for s in steps), [_END]
    )
    keys = starts if group.tiled.all() else _inert(group)
    # a later step starts strictly inside its own text, so its search cannot land in another response's tokens
    edges = np.searchsorted(keys, np.fromiter(chars, dtype=np.int64, count=first[-1] + 1), side="left")
    edges[first[:-1]] = token_start[:-1]
    if n:
        probe = np.minimum(edges[:-1], n - 1)
        for k in np.flatnonzero(ends[probe] <= starts[probe]).tolist():  # rare: zero-width tokens at an edge
            r = bisect.bisect_right(first, k) - 1
            while k != first[r] and edges[k] < token_start[r + 1] and ends[edges[k]] <= starts[edges[k]]:
                edges[k] += 1
    local = np.fromiter(itertools.chain.from_iterable(map(range, counts)), dtype=np.int64, count=first[-1])
    ids = np.repeat(local, edges[1:] - edges[:-1])
    out = list(torch.from_numpy(ids).split(np.diff(token_start).tolist()))
    for r in np.flatnonzero(~group.tiled).tolist():
        offsets = group[r][1]
        out[r] = token_step_ids(offsets, all_steps[r]) if len(offsets) else torch.zeros(0, dtype=torch.long)
    return out


def _inert(group: DecodedGroup) -> np.ndarray:
    """Token starts with each non-tiled response's (possibly unsorted) starts set to its text's start: sorted."""
    keys = group.starts.copy()
    for r in np.flatnonzero(~group.tiled).tolist():
        keys[group.token_start[r] : group.token_start[r + 1]] = group.text_start[r]
    return keys
