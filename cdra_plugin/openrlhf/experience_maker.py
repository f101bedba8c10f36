"""CDPA experience maker: OpenRLHF's ``RemoteExperienceMaker`` with the per-token advantage of Eq. 3.

Paper Section 2.4, Steps 3-4. The host's group estimators (``group_norm`` = GRPO) give every token of a response
the same normalised scalar reward; CDPA gives token t the score of the reasoning step holding it,
r_{i,t} = r_i^{step(t)}, and normalises per token position across the G responses of a prompt
(``cdra_plugin.cdpa.advantage.cdpa_advantages``, mode from ``--cdpa.mode``).

Only ``compute_advantages_and_returns`` changes (and a check before ``make_experience_batch``), and only for
``--algo.advantage.estimator cdpa``; every other estimator runs the host's code untouched. ``from_host`` builds it
from the host's own experience maker (its state copied, no constructor argument repeated), which is how the CDPA
trainers install it (``cdra_plugin.openrlhf.trainer``). Options: ``args.cdpa``, a ``CDPAConfig``. For ``cdpa``, per
batch:

1. The step scores come from the gateway through the ``extra_logs`` carrier (``cdra_plugin.cdpa.carrier``); the keys
   are removed from ``info`` once read.
2. Host length penalties (DAPO overlong, ProRL stop-properly) change the scalar reward as in the host; that change
   is added to every step score of the sample.
3. The action tokens of every response, in the host's group order (``index``, ``n_samples_per_prompt``), and their
   step scores go through ``cdra_plugin.cdpa.layout.token_layout`` (decoded with special tokens kept, the text the
   gateway saw, segmented at the carrier's width, r_{i,t} = r_i^{step(t)}; a step count that disagrees with the
   gateway's is a failure), and ``cdpa_advantages`` runs once over the whole batch.
4. ``--reward.clip_range LOW HIGH`` clamps each token's CDPA advantage, as the host clamps a group estimator's
   normalised reward (``compute_reward``) before the KL term; the share of tokens it changed is logged.
   KL as a reward (``--algo.kl.use_loss`` off) is then added as in the host: the return-to-go of -beta*KL_t.
5. Failed samples (PRM failure under the gateway's ``drop`` policy, a reward call that never returned, or a step
   mismatch) take no part in the group statistics and get zero advantage; ``--cdpa.failure_policy fail`` raises
   instead. They are counted in ``info['cdpa_failed']``.

Every ``info`` entry is one number per sample; the host logs their means as ``train/<key>`` (README, "Train with
CDPA", lists the CDPA ones).
"""

import torch
from openrlhf.models.utils import compute_reward
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties
from openrlhf.utils.logging_utils import init_logger

from cdra_plugin.cdpa.advantage import cdpa_advantages
from cdra_plugin.cdpa.carrier import (
    FAILED_KEY,
    StepScores,
    carrier_width,
    decode_step_scores,
    encode_step_scores,
    pop_carrier,
)
from cdra_plugin.cdpa.layout import TokenLayout, token_layout
from cdra_plugin.openrlhf.tracer import CritiqueTracer

logger = init_logger(__name__)


class CDPAExperienceMaker(RemoteExperienceMaker):
    """``RemoteExperienceMaker`` plus the ``cdpa`` estimator (options under ``args.cdpa``)."""

    tracer: CritiqueTracer | None

    @classmethod
    def from_host(cls, host: RemoteExperienceMaker, tracer: CritiqueTracer | None = None) -> "CDPAExperienceMaker":
        """The CDPA variant of the host's experience maker: the same state, shared (model groups, KL controller,
        strategy, tokenizer and whatever else the host's constructor set up), so the host's constructor arguments
        are not repeated here. Only the host's own class is accepted: a subclass's behaviour would be lost."""
        if type(host) is not RemoteExperienceMaker:
            raise TypeError(
                f"the trainer's experience maker is a {type(host).__qualname__}, not OpenRLHF's "
                "RemoteExperienceMaker: cdra-plugin cannot combine CDPA with another plugin's experience maker"
            )
        maker = cls.__new__(cls)
        maker.__dict__.update(vars(host))
        maker.tracer = tracer
        return maker

    @torch.no_grad()
    def make_experience_batch(self, rollout_samples):
        if self.advantage_estimator == "cdpa":
            self._check_rewards(rollout_samples)
        return super().make_experience_batch(rollout_samples)

    def _check_rewards(self, samples) -> None:
        """A reward call that never returned leaves a sample without reward and carrier (the host logs and goes on).

        Under ``drop`` it becomes an explicit failed sample with the same info keys as the others (so the host's
        concatenation stays aligned); under ``fail`` training stops here with the count.
        """
        missing = [s for s in samples if s.rewards is None or carrier_width(s.info) == 0]
        if not missing:
            return
        missing_ids = {id(s) for s in missing}
        if self.args.cdpa.failure_policy == "fail" or len(missing) == len(samples):
            what_else = (
                "or use --cdpa.failure_policy drop to train on without them"
                if self.args.cdpa.failure_policy == "fail"
                else "none came back, so even --cdpa.failure_policy drop leaves nothing to train on"
            )
            raise RuntimeError(
                f"{len(missing)} of {len(samples)} samples came back without a PRM reward or step scores: check "
                f"that --reward.remote_url points at a running `cdra prm serve` gateway (GET /health); {what_else}."
            )
        template = next(s for s in samples if id(s) not in missing_ids)
        block = encode_step_scores(None, carrier_width(template.info))
        for sample in missing:
            sample.rewards = torch.zeros(1)
            sample.scores = torch.zeros(1) if template.scores is not None else None
            sample.info = {key: torch.tensor([block.get(key, 0.0)]) for key in template.info}
        logger.warning(f"[cdpa] {len(missing)} samples without a PRM reward: dropped from this update")

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences):
        if self.advantage_estimator != "cdpa":
            return super().compute_advantages_and_returns(experiences)
        args = self.args
        for exp in experiences:
            exp.rewards = exp.rewards.to(torch.promote_types(exp.rewards.dtype, torch.float32))
        before = [exp.rewards.clone() for exp in experiences]
        apply_length_penalties(experiences, args)
        layout = self._token_layout(experiences, before)
        n_failed = int(layout.failed.sum())
        if n_failed and args.cdpa.failure_policy == "fail":
            raise RuntimeError(f"[cdpa] PRM scoring failed for {n_failed} samples and --cdpa.failure_policy is fail")

        advantages, stats = cdpa_advantages(
            layout.rewards,
            layout.valid,
            args.rollout.n_samples_per_prompt,
            mode=args.cdpa.mode,
            eps=args.cdpa.eps,
            step_ids=layout.step_ids,
            outcome_aggregation=args.cdpa.outcome_aggregation,
        )
        if args.reward.clip_range:
            low, high = args.reward.clip_range
            changed = ((advantages < low) | (advantages > high)) & layout.valid
            stats["clipped_token_frac"] = float(changed.sum() / layout.valid.sum().clamp(min=1))
            advantages = advantages.clamp(low, high)
        for exp in experiences:
            self._finish(exp, layout, advantages, stats)
        if self.tracer is not None:
            self.tracer.trace(experiences, layout, advantages, self.tokenizer)
        logger.info("[cdpa] " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(stats.items())))
        return experiences

    def _token_layout(self, experiences, before: list[torch.Tensor]) -> TokenLayout:
        """Every response of the batch in one layout, row = the host's sample ``index`` (its group order).

        The change a length penalty made to a sample's reward is added to each of its step scores."""
        decoded = [decode_step_scores(exp.info) for exp in experiences]
        widths = sorted({steps.width for steps in decoded})
        if len(widths) > 1:
            raise RuntimeError(
                f"[cdpa] step scores of widths {widths} in one batch: every gateway in --reward.remote_url must run "
                "with the same --max-steps"
            )
        for exp in experiences:
            pop_carrier(exp.info)
        indices = torch.tensor([i for exp in experiences for i in exp.index])
        row = torch.empty_like(indices)
        row[indices] = torch.arange(len(indices))  # row[i]: where host sample i is in the experiences laid end to end
        # rewards are (B,) or, from a batch-style reward server such as the gateway, (B, 1)
        penalty = torch.cat([(exp.rewards - prev).reshape(-1) for exp, prev in zip(experiences, before, strict=True)])
        scores = torch.cat([steps.scores for steps in decoded]) + penalty.float()[:, None]
        num_steps = torch.cat([steps.num_steps for steps in decoded])
        failed = torch.cat([steps.failed for steps in decoded])
        actions = [
            exp.sequences[i, 1:][exp.action_mask[i].bool()] for exp in experiences for i in range(len(exp.index))
        ]
        steps = StepScores(scores[row], num_steps[row], failed[row])
        return token_layout(self.tokenizer, [actions[k] for k in row.tolist()], steps)

    def _finish(self, exp, layout: TokenLayout, advantages: torch.Tensor, stats: dict) -> None:
        """Back to the experience's (B, A) action layout, plus the host's KL reward shaping and the per-sample logs."""
        rows = torch.tensor(exp.index)
        action = exp.action_mask.bool()
        own = torch.zeros(action.shape, dtype=torch.float32)
        own[action] = advantages[rows][torch.arange(advantages.shape[1]) < action.sum(1, keepdim=True)]
        zeros = torch.zeros(len(rows), dtype=exp.kl.dtype)
        kl_reward = compute_reward(zeros, self.kl_ctl.value, exp.kl, action_mask=exp.action_mask)
        kl_return = self.get_cumulative_returns(kl_reward, exp.action_mask, 1.0) * exp.action_mask
        failed = layout.failed[rows]
        exp.advantages = torch.where(failed[:, None], 0.0, own + kl_return)
        exp.returns = exp.advantages.clone()
        exp.info["return"] = exp.rewards.reshape(-1) + kl_reward.sum(dim=-1)
        exp.info[FAILED_KEY] = failed.float()
        exp.info["cdpa_mismatch"] = layout.mismatch[rows].float()
        exp.info["cdpa_num_steps"] = torch.tensor([float(len(layout.aligned[i].steps)) for i in exp.index])
        for key, value in stats.items():
            exp.info[f"cdpa_{key}"] = torch.full((len(rows),), float(value))
        exp.kl = None
