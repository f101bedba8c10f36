"""GatewayReward, the TRL reward function: the real gateway on loopback, the scripted PRM behind it, the tiny
tokenizer. Needs no TRL (the function is called the way GRPOTrainer calls it), so it runs in every environment."""

import contextlib
import json
import re
from pathlib import Path

import pytest
from prm_helpers import serving

from cdra_plugin.cdpa.align import align_steps
from cdra_plugin.stub import ScriptedLLM, prm_step_judge
from cdra_plugin.trl.reward import GatewayReward

FAST = {"timeout": 0.5, "retries": 1, "backoff": 0.001, "backoff_max": 0.002}
LABEL = json.dumps({"preference": "I avoid crowds.", "question": "Where should I travel in May?"})
PROMPT = [{"role": "user", "content": "Where should I travel in May?"}]
ANSWERS = [
    "Step 1: You value calm. [score=0.8]\nStep 2: Go to Lofoten. [score=0.2]",
    "Step 1: You like cities. [score=-0.4]\nStep 2: Rome. [score=0.6]\nFinal Answer: Rome. [score=1]",
    "Step 1: Quiet matters. [score=0.5]\nStep 2: The Azores. [http=500]",  # the PRM keeps failing on step 2
]


@contextlib.contextmanager
def gateway(**options):
    with (
        ScriptedLLM(prm_step_judge(default=0.5)) as llm,
        serving([llm.base_url], width=8, client=FAST, **options) as (url, _),
    ):
        yield url + "/get_reward"


def call(reward, tokenizer, answers, **kwargs):
    """As GRPOTrainer calls a reward function: prompts, decoded completions, their ids, and the dataset columns."""
    ids = [tokenizer(a + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for a in answers]
    completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
    columns = {"label": [LABEL] * len(answers), **kwargs}
    return reward(prompts=[PROMPT] * len(answers), completions=completions, completion_ids=ids, **columns), ids


def test_rewards_are_r_dense_and_failed_samples_are_masked(tiny_tokenizer):
    logged = {}
    with gateway(failure_policy="drop", reward_aggregation="sum") as url:
        reward = GatewayReward(url, tiny_tokenizer)
        rewards, ids = call(reward, tiny_tokenizer, ANSWERS, log_metric=logged.__setitem__)
    assert rewards[0] == pytest.approx(1.0) and rewards[1] == pytest.approx(1.2)
    assert rewards[2] is None  # dropped by the gateway: masked for TRL, never the protocol's placeholder 0.0
    last = reward.last
    steps = last.step_scores
    assert last.completion_ids == ids and steps.width == 8
    assert steps.failed.tolist() == [False, False, True] and steps.num_steps.tolist() == [2, 3, 0]
    assert steps.scores[1, :3].tolist() == pytest.approx([-0.4, 0.6, 1.0])
    # the trainer segments the same ids into as many steps as the gateway scored (special tokens kept, eos at end)
    assert [len(a.steps) for a in align_steps(tiny_tokenizer, ids[:2], max_steps=steps.width)] == [2, 3]
    assert logged["prm/failed_frac"] == pytest.approx(1 / 3)
    assert logged["prm/mean_step_score"] == pytest.approx((0.5 + 0.4) / 2)
    assert logged["prm/num_steps"] == pytest.approx(2.5)


def test_mean_aggregation_and_explicit_fallback_are_the_gateways(tiny_tokenizer):
    with gateway(failure_policy="score=0.25", reward_aggregation="mean") as url:
        rewards, _ = call(GatewayReward(url, tiny_tokenizer), tiny_tokenizer, ANSWERS)
    assert rewards == pytest.approx([0.5, 0.4, (0.5 + 0.25) / 2])


def test_fail_policy_stops_training_with_the_gateways_reason(tiny_tokenizer):
    with gateway(failure_policy="fail") as url:
        with pytest.raises(RuntimeError, match=r"HTTP 502: .*sample 2.*failure-policy fail"):
            call(GatewayReward(url, tiny_tokenizer), tiny_tokenizer, ANSWERS)


def test_bearer_token_from_the_environment(tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("CDRA_TEST_TOKEN", "s3cret")
    with gateway(reward_aggregation="sum", auth_token="s3cret") as url:
        rewards, _ = call(GatewayReward(url, tiny_tokenizer, auth_token_env="CDRA_TEST_TOKEN"), tiny_tokenizer,
                          ANSWERS[:1])  # fmt: skip
        assert rewards == pytest.approx([1.0])
        with pytest.raises(RuntimeError, match="HTTP 401"):
            call(GatewayReward(url, tiny_tokenizer), tiny_tokenizer, ANSWERS[:1])


def test_a_token_in_the_url_never_appears_in_errors(tiny_tokenizer, unused_port):
    # http://user:TOKEN@host is how OpenRLHF's client passes the gateway's token; httpx sends it as basic auth
    with gateway(reward_aggregation="sum", auth_token="right-token") as url:
        good = url.replace("http://", "http://cdra:right-token@")
        assert call(GatewayReward(good, tiny_tokenizer), tiny_tokenizer, ANSWERS[:1])[0] == pytest.approx([1.0])
        with pytest.raises(RuntimeError, match="HTTP 401") as refused:
            call(GatewayReward(url.replace("http://", "http://cdra:wrong-token@"), tiny_tokenizer), tiny_tokenizer,
                 ANSWERS[:1])  # fmt: skip
    dead = f"http://cdra:right-token@127.0.0.1:{unused_port}/get_reward"
    with pytest.raises(RuntimeError, match="is `cdra prm serve` running there") as unreachable:
        call(GatewayReward(dead, tiny_tokenizer, retries=0), tiny_tokenizer, ANSWERS[:1])
    for err in (refused, unreachable):
        assert "-token" not in str(err.value) and "POST http://127.0.0.1:" in str(err.value)


def test_misuse_gets_a_clear_error(tiny_tokenizer, unused_port):
    with pytest.raises(ValueError, match="must be the gateway's http://HOST:PORT/get_reward"):
        GatewayReward("http://127.0.0.1:5000/score", tiny_tokenizer)
    with pytest.raises(ValueError, match="CDRA_NO_SUCH_VAR is not set"):
        GatewayReward("http://127.0.0.1:5000/get_reward", tiny_tokenizer, auth_token_env="CDRA_NO_SUCH_VAR")
    reward = GatewayReward(f"http://127.0.0.1:{unused_port}/get_reward", tiny_tokenizer, retries=1)
    with pytest.raises(ValueError, match="the dataset has no 'label' column"):
        reward(prompts=["p"], completions=["c"], completion_ids=[[1]])
    with pytest.raises(RuntimeError, match=r"after 2 tries; is `cdra prm serve` running there"):
        call(reward, tiny_tokenizer, ANSWERS[:1])


def test_only_cdra_plugin_trl_imports_trl():
    package = Path(__file__).resolve().parents[1] / "cdra_plugin"
    importing = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(import trl\b|from trl\b)", path.read_text(encoding="utf-8"), re.M)
    }
    assert importing and all(name.startswith("trl/") for name in importing), importing
