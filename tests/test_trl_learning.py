"""CDPA inside TRL's GRPOTrainer on a CPU: a tiny policy learns from a scripted PRM through the real gateway.

Every batch the trainer trains on is checked against a reference built here response by response (``align_steps``
on a batch of one, step scores from the PRM's rule, never from the trainer) and ``cdpa_advantages``: the per-token
advantages TRL's loss receives must be exactly those.
"""

import dataclasses
import re
import statistics

import pytest
import torch

pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'cdra-plugin[trl]' (setup_env.sh has it)")

from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from cdra_plugin.cdpa.advantage import cdpa_advantages  # noqa: E402
from cdra_plugin.cdpa.align import align_steps  # noqa: E402
from cdra_plugin.cdpa.config import CDPAConfig  # noqa: E402
from cdra_plugin.demo.learn import MODES, TARGET, G, build_policy, judge, learning_curve  # noqa: E402
from cdra_plugin.stub import ScriptedRequest  # noqa: E402
from cdra_plugin.trl.reward import GatewayReward  # noqa: E402
from cdra_plugin.trl.trainer import CDPAGRPOTrainer  # noqa: E402

STEPS = 20  # training steps of the learning runs (about 0.5 s each on two cores)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_policy(tmp_path_factory.mktemp("trl-policy"), updates=150)


@pytest.fixture(scope="module")
def tokenizer(policy):
    return AutoTokenizer.from_pretrained(policy)


def recording(base, batches: list):
    """``base`` keeping every batch it built (completion ids and mask, the advantages the loss will see)."""

    class Recording(base):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            batches.append({k: output[k].clone() for k in ("completion_ids", "completion_mask", "advantages")})
            return output

    return Recording


def failing_judge(request: ScriptedRequest) -> str:
    """The learning rule, but the PRM never gives a score for a step containing 'ideas': those samples fail."""
    step = request.prompt.rpartition("New Thought to Evaluate:")[2]
    return "Reasoning: I cannot judge this." if "ideas" in step else judge(request)


def reference(tokenizer, batch, *, fails_on: str | None = None):
    """(rewards, valid, step_ids, R_dense) of the batch, by the per-response path and the rule of ``judge``."""
    ids, mask = batch["completion_ids"], batch["completion_mask"].bool()
    rewards, valid = torch.zeros(ids.shape), torch.zeros(ids.shape, dtype=torch.bool)
    step_ids, r_dense = torch.zeros(ids.shape, dtype=torch.long), torch.zeros(ids.shape[0])
    for i in range(ids.shape[0]):
        ((text, steps, of_token),) = align_steps(tokenizer, [ids[i, mask[i]].tolist()], max_steps=8)
        bodies = [s.body(text) for s in steps]
        scores = torch.tensor([1.0 if re.search(rf"\b{TARGET}\b", b, re.I) else -1.0 for b in bodies])
        n = len(of_token)
        rewards[i, :n], step_ids[i, :n], r_dense[i] = scores[of_token], of_token, scores.sum()
        valid[i, :n] = not (fails_on and any(fails_on in b for b in bodies))
    return rewards, valid, step_ids, r_dense


@pytest.mark.parametrize("mode", ["cdpa", "outcome"])
def test_policy_learns_and_the_loss_gets_cdpa_advantages(policy, tokenizer, mode):
    batches = []
    curve = learning_curve(mode, steps=STEPS, policy=policy, trainer_cls=recording(CDPAGRPOTrainer, batches))
    first, last = statistics.fmean(curve.scores[:5]), statistics.fmean(curve.scores[-5:])
    print(f"{mode}: mean step score {first:.2f} -> {last:.2f} in {STEPS} steps, {curve.seconds:.0f} s")
    assert len(curve.scores) == len(batches) == STEPS
    assert last - first >= 0.4 and last >= 0.3, curve.scores  # it learnt to mention TARGET in its steps
    for batch in batches:
        rewards, valid, step_ids, _ = reference(tokenizer, batch)
        assert valid.any(1).all()  # every completion scored and aligned: none left out
        expected, _ = cdpa_advantages(
            rewards, valid, G, mode=MODES[mode], step_ids=step_ids, outcome_aggregation="sum"
        )
        torch.testing.assert_close(batch["advantages"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["group_steps", "process", "min_form", "cdpa"])
def test_every_mode_leaves_failed_samples_out(policy, tokenizer, mode):
    batches = []
    learning_curve(mode, steps=2, policy=policy, trainer_cls=recording(CDPAGRPOTrainer, batches), prm=failing_judge)
    for batch in batches:
        rewards, valid, step_ids, _ = reference(tokenizer, batch, fails_on="ideas")
        assert 0 < int(valid.any(1).sum()) < valid.shape[0]  # some samples failed, some did not
        expected, _ = cdpa_advantages(rewards, valid, G, mode=MODES[mode], step_ids=step_ids)
        torch.testing.assert_close(batch["advantages"], expected, rtol=0, atol=1e-6)
        assert (batch["advantages"][~valid.any(1)] == 0).all()


def test_trls_own_grpo_trainer_masks_failed_samples(policy, tokenizer):
    """GatewayReward as a plain reward function: TRL's per-sequence GRPO on R_dense, failed samples at zero."""
    batches = []
    learning_curve("outcome", steps=1, policy=policy, trainer_cls=recording(GRPOTrainer, batches), prm=failing_judge)
    [batch] = batches
    _, valid, _, r_dense = reference(tokenizer, batch, fails_on="ideas")
    ok = valid.any(1)
    assert batch["advantages"].shape == ok.shape and (batch["advantages"][~ok] == 0).all()
    r_dense = r_dense.where(ok, torch.nan).view(-1, G)
    mean, std = r_dense.nanmean(1, keepdim=True), _nanstd(r_dense)
    expected = ((r_dense - mean) / (std + 1e-4)).nan_to_num(0.0).view(-1)  # TRL's group normalisation
    torch.testing.assert_close(batch["advantages"], expected, rtol=0, atol=1e-5)


def _nanstd(x: torch.Tensor) -> torch.Tensor:
    n = (~x.isnan()).sum(1, keepdim=True)
    return (((x - x.nanmean(1, keepdim=True)) ** 2).nansum(1, keepdim=True) / (n - 1)).sqrt()


def test_misuse_is_refused_before_any_model_loads(tiny_tokenizer):
    reward = GatewayReward("http://127.0.0.1:5000/get_reward", tiny_tokenizer)
    config = GRPOConfig(output_dir="unused", num_generations=2, per_device_train_batch_size=2, use_cpu=True)
    for args, cdpa in ((CDPAConfig(), None), (config, config)):  # the CDPA options where TRL's go, or TRL's
        with pytest.raises(TypeError, match="TRL's options go in args, the CDPA ones .* in cdpa"):
            CDPAGRPOTrainer(None, [reward], args, cdpa=cdpa)
    with pytest.raises(ValueError, match="exactly one reward function, a GatewayReward"):
        CDPAGRPOTrainer(None, [reward, lambda **kwargs: [0.0]], config)
    with pytest.raises(ValueError, match="does not support tools"):
        CDPAGRPOTrainer(None, [reward], config, tools=[print])
    with pytest.raises(ValueError, match=r"^--cdpa.trace_path is honoured only by cdra-train \(OpenRLHF\), not by"):
        CDPAGRPOTrainer(None, [reward], config, cdpa=CDPAConfig(trace_path="traces.jsonl"))
    with pytest.raises(ValueError, match="--cdpa.mode must be one of token_position, group_steps, process, min_form"):
        CDPAConfig(mode="eq3")


def test_failure_policy_fail_stops_training(policy):
    class Failing(CDPAGRPOTrainer):
        def __init__(self, *args, cdpa, **kwargs):
            super().__init__(*args, cdpa=dataclasses.replace(cdpa, failure_policy="fail"), **kwargs)

    with pytest.raises(RuntimeError, match=r"completions have no usable step scores .* failure_policy is fail"):
        learning_curve("cdpa", steps=1, policy=policy, trainer_cls=Failing, prm=failing_judge)
