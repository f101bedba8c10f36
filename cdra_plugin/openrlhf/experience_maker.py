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
2. Each response is decoded from its action tokens (special tokens kept, the text the gateway saw), segmented
   at the carrier's width, and every action token gets its step through the tokenizer's offsets, all in one
   batched call (``cdra_plugin.cdpa.align``). A step count that disagrees with the gateway's is a failure.
3. Host length penalties (DAPO overlong, ProRL stop-properly) change the scalar reward as in the host; that change
   is added to every step score of the sample.
4. Responses are laid out by response position (token t = t-th generated token) in the host's group order
   (``index``, ``n_samples_per_prompt``) and ``cdpa_advantages`` runs once over the whole batch.
5. ``--reward.clip_range LOW HIGH`` clamps each token's CDPA advantage, as the host clamps a group estimator's
   normalised reward (``compute_reward``) before the KL term; the share of tokens it changed is logged.
   KL as a reward (``--algo.kl.use_loss`` off) is then added as in the host: the return-to-go of -beta*KL_t.
6. Failed samples (PRM failure under the gateway's ``drop`` policy, a reward call that never returned, or a step
   mismatch) take no part in the group statistics and get zero advantage; ``--cdpa.failure_policy fail`` raises
   instead. They are counted in ``info['cdpa_failed']``.

Every ``info`` entry is one number per sample; the host logs their means as ``train/<key>`` (README, "Train with
CDPA", lists the CDPA ones).
"""

from dataclasses import dataclass

import torch
from openrlhf.models.utils import compute_reward
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties
from openrlhf.utils.logging_utils import init_logger

from cdra_plugin.cdpa.advantage import cdpa_advantages
from cdra_plugin.cdpa.align import align_steps
from cdra_plugin.cdpa.carrier import FAILED_KEY, carrier_width, decode_step_scores, encode_step_scores, pop_carrier
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

        # Rewards are (B,) or, from a batch-style reward server such as the gateway, (B, 1): flatten.
        rows = [
            self._sample_rows(exp, (exp.rewards - prev).reshape(-1))
            for exp, prev in zip(experiences, before, strict=True)
        ]
        layout = _ResponseLayout([r for exp_rows in rows for r in exp_rows], [i for e in experiences for i in e.index])
        n_failed = int(sum(r.failed for exp_rows in rows for r in exp_rows))
        if n_failed and args.cdpa.failure_policy == "fail":
            raise RuntimeError(f"[cdpa] PRM scoring failed for {n_failed} samples and --cdpa.failure_policy is fail")

        advantages, stats = cdpa_advantages(
            layout.rewards,
            layout.mask,
            args.rollout.n_samples_per_prompt,
            mode=args.cdpa.mode,
            eps=args.cdpa.eps,
            step_ids=layout.step_ids,
            outcome_aggregation=args.cdpa.outcome_aggregation,
        )
        if args.reward.clip_range:
            low, high = args.reward.clip_range
            changed = ((advantages < low) | (advantages > high)) & layout.mask
            stats["clipped_token_frac"] = float(changed.sum() / layout.mask.sum().clamp(min=1))
            advantages = advantages.clamp(low, high)
        for exp, exp_rows, per_sample in zip(experiences, rows, layout.split(advantages, experiences), strict=True):
            self._finish(exp, exp_rows, per_sample, stats)
        if self.tracer is not None:
            self.tracer.trace(experiences, rows, advantages, self.tokenizer)
        logger.info("[cdpa] " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(stats.items())))
        return experiences

    def _sample_rows(self, exp, penalty: torch.Tensor) -> list["_Row"]:
        scores, num_steps, failed = decode_step_scores(exp.info)
        width = scores.shape[1]
        pop_carrier(exp.info)
        # the action tokens of every row, aligned with their steps in one batched call (cdra_plugin.cdpa.align)
        actions = [exp.sequences[i, 1:][exp.action_mask[i].bool()] for i in range(exp.sequences.shape[0])]
        out = []
        for i, (text, steps, step_of_token) in enumerate(align_steps(self.tokenizer, actions, max_steps=width)):
            mismatch = not failed[i] and len(steps) != int(num_steps[i])
            step_scores = scores[i, : len(steps)] + penalty[i].float()
            out.append(_Row(step_of_token, step_scores, bool(failed[i]) or mismatch, mismatch, text, steps))
        return out

    def _finish(self, exp, rows, advantages: torch.Tensor, stats: dict) -> None:
        """Add the host's KL reward shaping, set advantages/returns and the per-sample logs."""
        zeros = torch.zeros(len(rows), dtype=exp.kl.dtype)
        kl_reward = compute_reward(zeros, self.kl_ctl.value, exp.kl, action_mask=exp.action_mask)
        kl_return = self.get_cumulative_returns(kl_reward, exp.action_mask, 1.0) * exp.action_mask
        failed = torch.tensor([r.failed for r in rows])
        exp.advantages = torch.where(failed[:, None], 0.0, advantages + kl_return)
        exp.returns = exp.advantages.clone()
        exp.info["return"] = exp.rewards.reshape(-1) + kl_reward.sum(dim=-1)
        exp.info[FAILED_KEY] = failed.float()
        exp.info["cdpa_mismatch"] = torch.tensor([float(r.mismatch) for r in rows])
        exp.info["cdpa_num_steps"] = torch.tensor([float(len(r.step_scores)) for r in rows])
        for key, value in stats.items():
            exp.info[f"cdpa_{key}"] = torch.full((len(rows),), float(value))
        exp.kl = None


@dataclass(slots=True)
class _Row:
    """One response: the step of each action token, its step scores, and whether it takes part."""

    step_of_token: torch.Tensor
    step_scores: torch.Tensor
    failed: bool
    mismatch: bool
    text: str
    steps: list


class _ResponseLayout:
    """All responses of a batch as (N, T) tensors, row = host sample index, column = response position."""

    def __init__(self, rows: list[_Row], order: list[int]):
        self.order = order
        width = max([len(r.step_of_token) for r in rows] + [1])
        self.rewards = torch.zeros(len(rows), width)
        self.mask = torch.zeros(len(rows), width, dtype=torch.bool)
        self.step_ids = torch.zeros(len(rows), width, dtype=torch.long)
        for row, index in zip(rows, order, strict=True):
            n = len(row.step_of_token)
            self.step_ids[index, :n] = row.step_of_token
            self.rewards[index, :n] = row.step_scores[row.step_of_token] if n else 0.0
            self.mask[index, :n] = not row.failed

    def split(self, advantages: torch.Tensor, experiences) -> list[torch.Tensor]:
        """Back to each experience's (B, A) action layout."""
        out = []
        for exp in experiences:
            per = torch.zeros(exp.action_mask.shape, dtype=torch.float32)
            for i, index in enumerate(exp.index):
                action = exp.action_mask[i].bool()
                per[i, action] = advantages[index, : int(action.sum())]
            out.append(per)
        return out
