"""How per-step PRM results travel from the gateway to the CDPA experience maker.

OpenRLHF keeps only three things of a remote reward response: ``rewards``, ``scores`` and ``extra_logs``, where
each ``extra_logs`` entry becomes ``Experience.info[name] = tensor([value])``: one scalar per sample (OpenRLHF
0.11.2's ``samples_generator.py``). The step scores therefore ride in a fixed-width block of scalar ``extra_logs``
keys:

    cdpa_num_steps        number of steps the gateway scored (0 when scoring failed)
    cdpa_failed           1.0 when the PRM result is missing under the ``drop`` policy, else 0.0
    cdpa_step_00 .. _NN   r_j for j < num_steps, 0.0 after (the width is the gateway's ``--max-steps``)

Why this carrier: it is stateless (no second HTTP call from the trainer, nothing to evict from a cache), it travels
with the sample through everything the host does to experiences (async queues, dynamic filtering, packing), and each
(prompt, response) pair is scored exactly once, inside the vLLM actor, overlapped with generation. The price is a
fixed width: responses with more steps than ``--max-steps`` have their tail merged into the last step by
``segment_steps(..., max_steps=width)``, on both sides, so the two still agree. The experience maker removes these
keys from ``info`` after reading them, so they never reach the training logs.

The encode side runs in the gateway, which does not load torch; only ``decode_step_scores`` (the trainer) imports it.
It returns a ``StepScores``, what every host hands ``cdra_plugin.cdpa.layout.token_layout``.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NUM_STEPS_KEY = "cdpa_num_steps"
FAILED_KEY = "cdpa_failed"
STEP_KEY = "cdpa_step_{:02d}"


@dataclass(frozen=True)
class StepScores:
    """The gateway's step scores of B samples, as the carrier brings them back."""

    scores: "torch.Tensor"  # (B, W) float32: r_i^j for j < num_steps[i], 0.0 after
    num_steps: "torch.Tensor"  # (B,) long: steps the gateway scored (0 when it failed)
    failed: "torch.Tensor"  # (B,) bool: no PRM result (the gateway's ``drop`` policy)

    @property
    def width(self) -> int:
        """The gateway's ``--max-steps``: the trainer segments with it, so both count the same steps."""
        return self.scores.shape[1]


def encode_step_scores(step_scores: Sequence[float] | None, width: int) -> dict[str, float]:
    """The ``extra_logs`` block for one sample; ``None`` means the PRM result failed and was dropped."""
    if width < 1:
        raise ValueError(f"carrier width (--max-steps) must be >= 1, got {width}")
    scores = list(step_scores or [])
    if len(scores) > width:
        raise ValueError(f"{len(scores)} step scores do not fit a carrier of width {width}; segment with max_steps")
    block = {NUM_STEPS_KEY: float(len(scores)), FAILED_KEY: float(step_scores is None)}
    for k in range(width):
        block[STEP_KEY.format(k)] = float(scores[k]) if k < len(scores) else 0.0
    return block


def carrier_width(info: Mapping[str, object]) -> int:
    """How many step slots the block in ``info`` has (0 when there is no carrier: not a CDRA gateway reward)."""
    width = 0
    while STEP_KEY.format(width) in info:
        width += 1
    return width


def decode_step_scores(info: Mapping[str, "torch.Tensor"]) -> StepScores:
    """Batched read-back of the blocks of B samples (each key a (B,) tensor)."""
    import torch

    width = carrier_width(info)
    if width == 0 or NUM_STEPS_KEY not in info or FAILED_KEY not in info:
        raise KeyError(
            f"no per-step PRM scores in the experience info (expected keys {NUM_STEPS_KEY}, {FAILED_KEY}, "
            f"{STEP_KEY.format(0)}...): the cdpa estimator needs --reward.remote_url pointing at `cdra prm serve`"
        )
    scores = torch.stack([info[STEP_KEY.format(k)].float().reshape(-1) for k in range(width)], dim=1)
    num_steps = info[NUM_STEPS_KEY].reshape(-1).round().long()
    failed = info[FAILED_KEY].reshape(-1) > 0.5
    return StepScores(scores, num_steps, failed)


def pop_carrier(info: dict) -> None:
    """Remove the carrier keys so the host does not log dozens of per-slot means."""
    for k in range(carrier_width(info)):
        info.pop(STEP_KEY.format(k))
    info.pop(NUM_STEPS_KEY, None)
    info.pop(FAILED_KEY, None)
