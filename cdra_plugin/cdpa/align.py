"""Step alignment of generated responses: token ids -> (text, steps, step index of every token).

CDPA gives token t of response i the score of the step holding it, r_{i,t} = r_i^{step(t)} (paper Section 2.4,
Steps 2-4). Token spans come from the generated ids themselves (``cdra_plugin.cdpa.detok``), never from re-tokenising
step texts and searching for their ids: a step tokenised alone need not be a token subsequence of the response (the
response's last token of a step is often ".\\n\\n", the stripped step's is "."; sampled ids need not be the
canonical encoding), and such steps are silently lost (``scripts/bench_advantage.py`` counts them).

``align_steps`` is the one way from ids to steps, for a whole micro-batch (a single response is a batch of one):
the responses are decoded a group at a time, each text is segmented (``cdra_plugin.cdpa.steps.segment_steps``), and all
step boundaries of a group are found by one binary search among the group's token positions, in the coordinates of
the group's texts laid end to end. The rules:

- a token belongs to the step holding its first character, so a token straddling a step boundary stays with the
  earlier step;
- a zero-width token (one that adds no character: the tail bytes of a split multi-byte character, an id the decoder
  drops) belongs to the step of the token before it (step 0 when it comes first);
- every token gets a step; a step whose characters all lie inside one straddling token owns no token.

    >>> aligned = align_steps(tokenizer, [ids_0, ids_1], max_steps=16)   # ids: (T_i,) lists, arrays or tensors
    >>> aligned[0].text, aligned[0].steps, aligned[0].step_of_token      # str, list[Step], (T_0,) LongTensor

Text users encode first: ``align_steps(tokenizer, [tokenizer(text, add_special_tokens=False)["input_ids"]])``.
"""

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from cdra_plugin.cdpa.detok import DecodedGroup, decode_groups
from cdra_plugin.cdpa.steps import Step, segment_steps


class AlignedResponse(NamedTuple):
    """One response: its decoded ``text``, its ``steps``, and ``step_of_token`` (T,) int64 on the CPU."""

    text: str
    steps: list[Step]
    step_of_token: torch.Tensor


def align_steps(
    tokenizer, batch: Sequence, max_steps: int | None = None, group_tokens: int | None = None
) -> list[AlignedResponse]:
    """Align every response of ``batch`` (B items, each (T_i,) token ids: list, array, or tensor; tensors on one
    device) with its steps, segmented with ``max_steps`` (``segment_steps``). Returns B ``AlignedResponse``; the
    ``step_of_token`` tensors of a group share one buffer. ``text`` is ``tokenizer.decode(ids,
    skip_special_tokens=False, clean_up_tokenization_spaces=False)``. ``group_tokens``: tokens per group of
    responses (``cdra_plugin.cdpa.detok.decode_groups``; default ``GROUP_TOKENS``).
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (or None), got {max_steps}")
    out = []
    for group in decode_groups(tokenizer, batch, group_tokens):
        all_steps = [segment_steps(text, max_steps) for text in group.texts]
        out += map(AlignedResponse, group.texts, all_steps, _step_of_token(group, all_steps))
    return out


def _step_of_token(group: DecodedGroup, all_steps: list[list[Step]]) -> list[torch.Tensor]:
    """Each response's (T_i,) step indices (rules in the module docstring), for the whole group at once.

    Step k > 0 of a response, starting at character c, owns the tokens from its first token to the next step's
    first. That first token: the one holding character c (the first token ending after c) when it starts at c;
    when it starts before c it straddles the boundary and stays with step k - 1, as do the zero-width tokens after
    it, so the step starts at the next token that ends later (at the response's end at most).
    """
    ends, token_start = group.ends, group.token_start
    counts = [len(steps) for steps in all_steps]
    first = list(itertools.accumulate(counts, initial=0))  # first[r]: row of response r's step 0
    response = np.repeat(np.arange(len(counts)), counts)  # the response of each step
    edges = token_start[response]  # where each step's tokens begin: step 0 at its response's first token
    later = np.ones(first[-1], dtype=bool)
    later[first[:-1]] = False
    if later.any():
        bases = group.text_start[:-1].tolist()
        chars = np.array([base + s.start for steps, base in zip(all_steps, bases, strict=True) for s in steps[1:]])
        holder = np.searchsorted(ends, chars, side="right")  # a later step starts inside its text: holder < N
        straddles = np.where(holder > 0, ends[holder - 1], 0) < chars
        after = np.searchsorted(ends, ends[holder], side="right")
        response_end = token_start[1:][response[later]]
        edges[later] = np.where(straddles, np.minimum(after, response_end), holder)
    local = np.arange(first[-1]) - np.asarray(first)[response]  # each step's index in its response
    ids = np.repeat(local, np.diff(edges, append=len(ends)))
    return list(torch.from_numpy(ids).split(np.diff(token_start).tolist()))
