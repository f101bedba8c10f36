"""CDPA in TRL: ``GRPOTrainer`` with the per-token advantage of Eq. 3 (paper Section 2.4, Steps 2-5).

TRL's ``GRPOTrainer`` normalises one scalar reward per completion within its group and gives that advantage to
every token. ``CDPAGRPOTrainer`` gives token t of completion i the score of the step holding it,
r_{i,t} = r_i^{step(t)}, from the Pers-GenPRM gateway (``GatewayReward``), and replaces TRL's (B,) advantages by
the (B, T) ones of ``cdra_plugin.cdpa.advantage.cdpa_advantages`` (``CDPAConfig.cdpa_mode``: ``token_position`` =
Eq. 3, ``group_steps``, ``process`` = App. D, ``outcome`` = GRPO on the aggregated step scores). TRL's loss takes
(B, T) advantages as they are, so the PPO-clipped objective of Step 5 and the KL term (``beta``) stay TRL's own.

The hook is one override, ``_generate_and_score_completions``: TRL generates, scores through the reward function
and builds the batch; this method then swaps the ``advantages`` entry before TRL buffers and shuffles the batch.
Per batch, on the same path as OpenRLHF's (``cdra_plugin.openrlhf.experience_maker``):

1. The gateway's step scores come from the reward call (``GatewayReward.last``), for exactly these completion ids.
2. ``cdra_plugin.cdpa.align.align_steps`` decodes the ids (special tokens kept: the text the gateway saw), segments
   them with the gateway's ``--max-steps`` and gives every token its step. A step count that disagrees with the
   gateway's is counted (``cdpa/mismatch_frac``) and the completion left out, never guessed.
3. Completions the gateway dropped (reward ``None``), mismatched ones and those TRL masks from the loss
   (``mask_truncated_completions``) take no part in the group statistics and get zero advantage.
4. With several processes the (B, T) rewards are gathered, since a group's completions can sit on different
   ranks, and each rank keeps its slice, as TRL does with its rewards.

TRL's ``scale_rewards`` and ``multi_objective_aggregation`` do not apply (Eq. 3 fixes the normalisation); the
gateway must be the only reward function. Tools, environments and custom rollouts are refused (their tool tokens
are not the policy's steps). Evaluation keeps TRL's advantages (they only enter the evaluation loss).

    trainer = CDPAGRPOTrainer(model, reward_funcs=[GatewayReward(url, tokenizer)], args=CDPAConfig(...),
                              train_dataset=prompts, processing_class=tokenizer)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

try:
    import trl
    from trl import GRPOConfig, GRPOTrainer
except ImportError as exc:  # an optional extra
    raise ImportError(f"cdra_plugin.trl needs TRL ({exc}): pip install 'cdra-plugin[trl]'") from exc

from cdra_plugin.cdpa.advantage import MODES, OUTCOME_AGGREGATIONS, cdpa_advantages
from cdra_plugin.cdpa.align import AlignedResponse, align_steps
from cdra_plugin.trl.reward import GatewayBatch, GatewayReward

TRL_VERSION = "1.16.0"  # the release whose GRPOTrainer internals this subclass was written against


@dataclass
class CDPAConfig(GRPOConfig):
    """``GRPOConfig`` plus the CDPA options (``--cdpa_mode`` etc. on a TRL command line)."""

    cdpa_mode: str = field(
        default="token_position",
        metadata={"help": "token_position (Eq. 3), group_steps, process (App. D) or outcome (GRPO on step scores)"},
    )
    cdpa_eps: float = field(default=1e-6, metadata={"help": "epsilon of Eq. 3"})
    cdpa_outcome_aggregation: str = field(
        default="token_mean",
        metadata={"help": "outcome mode's reward from step scores: token_mean (splitting cannot raise it), mean, or "
                  "sum (the paper's R_dense)"},
    )  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        if self.cdpa_mode not in MODES:
            raise ValueError(f"cdpa_mode {self.cdpa_mode!r}: choose one of {', '.join(MODES)}")
        if self.cdpa_outcome_aggregation not in OUTCOME_AGGREGATIONS:
            raise ValueError(f"cdpa_outcome_aggregation must be one of {OUTCOME_AGGREGATIONS}")
        if not self.cdpa_eps >= 0:
            raise ValueError(f"cdpa_eps must be >= 0, got {self.cdpa_eps}")


class CDPAGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantages are CDPA's per-token ones (module docstring)."""

    def __init__(self, model, reward_funcs, args: CDPAConfig, **kwargs):
        if trl.__version__ != TRL_VERSION:
            raise RuntimeError(
                f"CDPAGRPOTrainer was written against trl=={TRL_VERSION} (its _generate_and_score_completions batch "
                f"and metrics); found trl=={trl.__version__}. Install the extra: pip install 'cdra-plugin[trl]'."
            )
        if not isinstance(args, CDPAConfig):
            raise TypeError(f"args must be a CDPAConfig (GRPOConfig + cdpa_* options), got {type(args).__name__}")
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        if len(funcs) != 1 or not isinstance(funcs[0], GatewayReward):
            raise ValueError(
                "CDPAGRPOTrainer needs exactly one reward function, a GatewayReward: the per-token advantages come "
                "from the gateway's step scores, so any other reward would be silently ignored"
            )
        refused = [name for name in ("tools", "rollout_func", "environment_factory") if kwargs.get(name)]
        if refused:
            raise ValueError(f"CDPAGRPOTrainer does not support {', '.join(refused)}: steps are the policy's own text")
        super().__init__(model, funcs, args, **kwargs)
        self.gateway = funcs[0]

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            output["advantages"] = self._cdpa_advantages(output["completion_ids"], output["completion_mask"])
        return output

    def _cdpa_advantages(self, completion_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        scored = self.gateway.last
        _check_same_completions(scored, completion_ids)
        aligned = align_steps(self._tokenizer, scored.completion_ids, max_steps=scored.width)
        rewards, valid, step_ids, mismatch = token_layout(aligned, scored, loss_mask.bool().any(1).cpu())
        device = completion_ids.device
        # bool travels as uint8: not every collective backend reduces bool tensors
        rewards, valid, step_ids = (self._gather(t.to(device)) for t in (rewards, valid.to(torch.uint8), step_ids))
        valid = valid.bool()
        args = self.args
        advantages, stats = cdpa_advantages(
            rewards, valid, self.num_generations, mode=args.cdpa_mode, eps=args.cdpa_eps, step_ids=step_ids,
            outcome_aggregation=args.cdpa_outcome_aggregation,
        )  # fmt: skip
        stats["mismatch_frac"] = float(self.accelerator.gather(mismatch.to(device, torch.float32)).mean())
        for key, value in stats.items():
            self._metrics["train"][f"cdpa/{key}"].append(value)
        # the completions table (log_completions) has one advantage per completion: the mean over its tokens
        self._logs["advantages"].clear()
        self._logs["advantages"].extend(((advantages * valid).sum(1) / valid.sum(1).clamp(min=1)).tolist())
        n = completion_ids.shape[0]
        start = self.accelerator.process_index * n
        local = advantages[start : start + n, : completion_ids.shape[1]]
        return torch.nn.functional.pad(local, (0, completion_ids.shape[1] - local.shape[1]))

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' rows in rank order (TRL's group layout), padded on the right to the longest completion."""
        return self.accelerator.gather(self.accelerator.pad_across_processes(tensor, dim=1))


def _check_same_completions(scored: GatewayBatch | None, completion_ids: torch.Tensor) -> None:
    """The gateway's last batch must be the trainer's: same rows, same ids (right-padded in ``completion_ids``)."""
    if scored is None or len(scored.completion_ids) != completion_ids.shape[0]:
        raise RuntimeError("the GatewayReward did not score this batch: it must be the trainer's reward function")
    for i, ids in enumerate(scored.completion_ids):
        if completion_ids[i, : len(ids)].tolist() != ids:
            raise RuntimeError(f"completion {i}: the ids the gateway scored are not the ids the trainer holds")


def token_layout(
    aligned: list[AlignedResponse], scored: GatewayBatch, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token inputs of ``cdpa_advantages`` for B completions laid out by position (column t = t-th token).

    keep: (B,) bool, False for completions outside the loss. Returns ``(rewards (B, T) float32 with
    r_{i,t} = r_i^{step(t)}, valid (B, T) bool, step_ids (B, T) long, mismatch (B,) bool)``; a completion is valid
    when kept, scored by the gateway and segmented into as many steps as the gateway scored.
    """
    n = len(aligned)
    width = max([len(a.step_of_token) for a in aligned] + [1])
    rewards, valid = torch.zeros(n, width), torch.zeros(n, width, dtype=torch.bool)
    step_ids = torch.zeros(n, width, dtype=torch.long)
    mismatch = torch.zeros(n, dtype=torch.bool)
    for i, row in enumerate(aligned):
        length = len(row.step_of_token)
        mismatch[i] = not scored.failed[i] and len(row.steps) != int(scored.num_steps[i])
        step_ids[i, :length] = row.step_of_token
        rewards[i, :length] = scored.scores[i, row.step_of_token].float()
        valid[i, :length] = bool(keep[i]) and not scored.failed[i] and not mismatch[i]
    return rewards, valid, step_ids, mismatch
