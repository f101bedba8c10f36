"""CDPA in TRL: ``GRPOTrainer`` with the per-token advantage of Eq. 3 (paper Section 2.4, Steps 2-5).

TRL's ``GRPOTrainer`` normalises one scalar reward per completion within its group and gives that advantage to
every token. ``CDPAGRPOTrainer`` gives token t of completion i the score of the step holding it,
r_{i,t} = r_i^{step(t)}, from the Pers-GenPRM gateway (``GatewayReward``), and replaces TRL's (B,) advantages by
the (B, T) ones of ``cdra_plugin.cdpa.advantage.cdpa_advantages``. TRL's options stay TRL's (``args``, a
``GRPOConfig``); the CDPA ones are ``cdpa``, the ``cdra_plugin.cdpa.config.CDPAConfig`` that ``cdra-train`` uses too
(``mode``: ``token_position`` = Eq. 3, ``group_steps``, ``process`` = App. D, ``min_form`` = PURE's min-form,
``outcome`` = GRPO on the aggregated step scores). TRL's loss takes (B, T) advantages as they are, so the
PPO-clipped objective of Step 5 and the KL term (``beta``) stay TRL's own.

The hook is one override, ``_generate_and_score_completions``: TRL generates, scores through the reward function
and builds the batch; this method then swaps the ``advantages`` entry before TRL buffers and shuffles the batch.
Per batch, on the same path as OpenRLHF's (``cdra_plugin.openrlhf.experience_maker``):

1. The gateway's step scores come from the reward call (``GatewayReward.last``), for exactly these completion ids.
2. ``cdra_plugin.cdpa.layout.token_layout`` decodes the ids (special tokens kept: the text the gateway saw),
   segments them with the gateway's ``--max-steps`` and gives every token its step's score. A step count that
   disagrees with the gateway's is counted (``cdpa/mismatch_frac``) and the completion left out, never guessed.
3. Completions the gateway dropped (reward ``None``), mismatched ones and those TRL masks from the loss
   (``mask_truncated_completions``) take no part in the group statistics and get zero advantage; with
   ``CDPAConfig(failure_policy="fail")`` a dropped or mismatched completion stops training instead.
4. With several processes the (B, T) rewards are gathered, since a group's completions can sit on different
   ranks, and each rank keeps its slice, as TRL does with its rewards.

TRL's ``scale_rewards`` and ``multi_objective_aggregation`` do not apply (Eq. 3 fixes the normalisation); the
gateway must be the only reward function. Tools, environments and custom rollouts are refused (their tool tokens
are not the policy's steps). Evaluation keeps TRL's advantages (they only enter the evaluation loss).

    trainer = CDPAGRPOTrainer(model, reward_funcs=[GatewayReward(url, tokenizer)], args=GRPOConfig(...),
                              cdpa=CDPAConfig(mode="process"), train_dataset=prompts, processing_class=tokenizer)
"""

from __future__ import annotations

import torch

try:
    import trl
    from trl import GRPOConfig, GRPOTrainer
except ImportError as exc:  # an optional extra
    raise ImportError(f"cdra_plugin.trl needs TRL ({exc}): pip install 'cdra-plugin[trl]'") from exc

from cdra_plugin.cdpa.advantage import cdpa_advantages
from cdra_plugin.cdpa.config import CDPAConfig
from cdra_plugin.cdpa.layout import token_layout
from cdra_plugin.trl.reward import GatewayBatch, GatewayReward

TRL_VERSION = "1.16.0"  # the release whose GRPOTrainer internals this subclass was written against


class CDPAGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantages are CDPA's per-token ones (module docstring); ``cdpa``: the CDPA options
    (``CDPAConfig()``'s defaults when None)."""

    def __init__(self, model, reward_funcs, args: GRPOConfig | None = None, cdpa: CDPAConfig | None = None, **kwargs):
        if trl.__version__ != TRL_VERSION:
            raise RuntimeError(
                f"CDPAGRPOTrainer was written against trl=={TRL_VERSION} (its _generate_and_score_completions batch "
                f"and metrics); found trl=={trl.__version__}. Install the extra: pip install 'cdra-plugin[trl]'."
            )
        cdpa = CDPAConfig() if cdpa is None else cdpa
        if not isinstance(cdpa, CDPAConfig) or isinstance(args, CDPAConfig):
            raise TypeError(
                "CDPAGRPOTrainer(model, reward_funcs, args=GRPOConfig(...), cdpa=CDPAConfig(...)): TRL's options go "
                f"in args, the CDPA ones (cdra_plugin.cdpa.config.CDPAConfig) in cdpa; got cdpa={type(cdpa).__name__}"
            )
        cdpa.check_host("trl")
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
        self.cdpa = cdpa

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            output["advantages"] = self._cdpa_advantages(output["completion_ids"], output["completion_mask"])
        return output

    def _cdpa_advantages(self, completion_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        scored = self.gateway.last
        _check_same_completions(scored, completion_ids)
        layout = token_layout(self._tokenizer, scored.completion_ids, scored.step_scores, loss_mask.bool().any(1))
        device = completion_ids.device
        # bool travels as uint8: not every collective backend reduces bool tensors
        gathered = (layout.rewards, layout.valid.to(torch.uint8), layout.step_ids, layout.failed.to(torch.uint8))
        rewards, valid, step_ids, failed = (self._gather(t.to(device)) for t in gathered)
        if self.cdpa.failure_policy == "fail" and failed.any():  # on every rank alike: all of them stop
            raise RuntimeError(
                f"[cdpa] {int(failed.sum())} of {failed.numel()} completions have no usable step scores (the gateway "
                "dropped them or their steps disagree with its) and failure_policy is fail"
            )
        valid = valid.bool()
        advantages, stats = cdpa_advantages(
            rewards, valid, self.num_generations, mode=self.cdpa.mode, eps=self.cdpa.eps, step_ids=step_ids,
            outcome_aggregation=self.cdpa.outcome_aggregation,
        )  # fmt: skip
        stats["mismatch_frac"] = float(self.accelerator.gather(layout.mismatch.to(device, torch.float32)).mean())
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
        if tensor.dim() == 1:
            return self.accelerator.gather(tensor)
        return self.accelerator.gather(self.accelerator.pad_across_processes(tensor, dim=1))


def _check_same_completions(scored: GatewayBatch | None, completion_ids: torch.Tensor) -> None:
    """The gateway's last batch must be the trainer's: same rows, same ids (right-padded in ``completion_ids``)."""
    if scored is None or len(scored.completion_ids) != completion_ids.shape[0]:
        raise RuntimeError("the GatewayReward did not score this batch: it must be the trainer's reward function")
    for i, ids in enumerate(scored.completion_ids):
        if completion_ids[i, : len(ids)].tolist() != ids:
            raise RuntimeError(f"completion {i}: the ids the gateway scored are not the ids the trainer holds")
