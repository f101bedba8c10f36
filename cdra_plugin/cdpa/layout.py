"""The per-token inputs of CDPA (paper Section 2.4, Steps 3-4), the one step every host runs before Eq. 3.

``token_layout(tokenizer, ids, step_scores, keep)`` takes the generated ids of B responses and the gateway's step
scores (``cdra_plugin.cdpa.carrier.StepScores``) and lays the responses out by position, column t = the t-th
generated token, as ``cdra_plugin.cdpa.advantage.cdpa_advantages`` takes them:

1. every response is decoded, segmented at the gateway's width (``--max-steps``) and each token given its step, all
   responses in one batched call (``cdra_plugin.cdpa.align.align_steps``);
2. a response segmented into another number of steps than the gateway scored is a mismatch: its scores would belong
   to other text, so it takes no part (counted, never guessed);
3. r_{i,t} = r_i^{step(t)}; a token is valid when its response is kept, was scored (not ``failed``) and matches.

The OpenRLHF experience maker, the TRL trainer and ``cdra demo`` all call it; what only one host has (OpenRLHF's
sample order and length penalties, TRL's loss mask and ranks) stays in its adapter.

    layout = token_layout(tokenizer, ids, decode_step_scores(info))
    advantages, stats = cdpa_advantages(layout.rewards, layout.valid, G, step_ids=layout.step_ids)
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch

from cdra_plugin.cdpa.align import AlignedResponse, align_steps
from cdra_plugin.cdpa.carrier import StepScores


class TokenLayout(NamedTuple):
    """B responses by position; T is the longest response's length."""

    rewards: torch.Tensor  # (B, T) float32: r_{i,t} = r_i^{step(t)}, 0 after the response
    valid: torch.Tensor  # (B, T) bool: the response's tokens, where it takes part
    step_ids: torch.Tensor  # (B, T) long: step(t), 0 after the response
    mismatch: torch.Tensor  # (B,) bool: scored, but segmented into another number of steps
    aligned: list[AlignedResponse]  # each response's text, steps and step of every token
    step_scores: StepScores  # what the layout was built from

    @property
    def failed(self) -> torch.Tensor:
        """(B,) bool: no usable step scores (the gateway's failure or a mismatch), whether kept or not."""
        return self.step_scores.failed | self.mismatch


def token_layout(tokenizer, ids: Sequence, step_scores: StepScores, keep: torch.Tensor | None = None) -> TokenLayout:
    """The layout of B responses (module docstring). ids: B items of (T_i,) generated token ids (lists, arrays or
    tensors), in the order of ``step_scores``' rows; keep: (B,) bool, False for responses outside the loss (all
    kept by default)."""
    n = len(ids)
    keep = torch.ones(n, dtype=torch.bool) if keep is None else keep.bool().cpu()
    if step_scores.scores.shape[0] != n or keep.shape != (n,):
        raise ValueError(
            f"{n} responses need {n} rows of step scores and a ({n},) keep mask; got {step_scores.scores.shape[0]} "
            f"rows and keep {tuple(keep.shape)}"
        )
    aligned = align_steps(tokenizer, ids, max_steps=step_scores.width)
    lengths = torch.tensor([len(a.step_of_token) for a in aligned], dtype=torch.long)
    counts = torch.tensor([len(a.steps) for a in aligned], dtype=torch.long)
    mismatch = ~step_scores.failed & (counts != step_scores.num_steps)
    inside = torch.arange(int(lengths.max()) if n else 0) < lengths[:, None]
    step_ids = torch.zeros(inside.shape, dtype=torch.long)
    step_ids[inside] = torch.cat([a.step_of_token for a in aligned] + [step_ids.new_zeros(0)])  # row-major fill
    scores = step_scores.scores.float().gather(1, step_ids)  # step ids < width: segmented at it
    rewards = torch.where(inside, scores, 0.0)
    takes_part = keep & ~(step_scores.failed | mismatch)
    return TokenLayout(rewards, inside & takes_part[:, None], step_ids, mismatch, aligned, step_scores)
