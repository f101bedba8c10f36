"""CDPA end to end on the CPU: policy responses -> the real gateway (scripted PRM behind it) -> OpenRLHF's own reward
client and Experience construction -> the CDPA experience maker -> advantages and critique traces."""

import asyncio
import json
import math

import pytest
import torch
from cdpa_host import cdpa_args, make_experience, query_text

from cdra_plugin.carrier import FAILED_KEY
from cdra_plugin.cli import build_parser, main
from cdra_plugin.prm.cli import build_gateway
from cdra_plugin.prm.server import create_app
from cdra_plugin.prompts import policy_prompt
from cdra_plugin.testing import BackgroundServer, ScriptedLLM, prm_step_judge
from cdra_plugin.traces import CritiqueTracer

LABEL = {"preference": "I avoid crowds.", "question": "Where should I travel in May?", "id": "travel/3", "topic": "t"}
FAST = ["--timeout", "0.5", "--retries", "1", "--backoff", "0.001", "--backoff-max", "0.002"]
EOT = "<|im_end|>"
RESPONSES = [  # two prompts x G = 2; the tags tell the scripted PRM what to answer for each step
    "Step 1: You value calm. [score=0.8]\nStep 2: Go to Lofoten. [score=0.2]" + EOT,
    "Step 1: You like cities. [score=0.4]\nStep 2: Try Rome in spring. [score=0.6]" + EOT,
    "Step 1: Quiet matters. [score=0.5]\nStep 2: Visit the Azores. [http=500]" + EOT,  # PRM keeps failing: drop
    "Step 1: Off-season. [score=-0.3]\nStep 2: Iceland's east. [score=0.9]" + EOT,
]


@pytest.fixture(scope="module")
def prompt_text(tiny_tokenizer):
    messages = [{"role": "user", "content": policy_prompt(LABEL["preference"], LABEL["question"])}]
    return tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture
def gateway_url():
    with ScriptedLLM(prm_step_judge(default=0.5)) as llm:
        argv = ["prm", "serve", "--backend", llm.base_url, "--model", "prm", "--max-steps", "8"]
        gateway = build_gateway(build_parser().parse_args(argv + FAST + ["--failure-policy", "drop"]))
        with BackgroundServer(create_app(gateway)) as server:
            yield server.url, llm


def test_cdpa_from_gateway_to_advantages_and_traces(monkeypatch, tmp_path, capsys, gateway_url, tiny_model_path,
                                                     tiny_tokenizer, prompt_text):  # fmt: skip
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from cdra_plugin.openrlhf.experience_maker import CDPAExperienceMaker

    url, llm = gateway_url
    executor = SingleTurnAgentExecutor(remote_rm_url=url + "/get_reward")
    label = json.dumps(LABEL)
    samples = []
    for response in RESPONSES:  # one reward call per sample, as the vLLM actors make them
        query = query_text(tiny_tokenizer, prompt_text, response)
        [info] = asyncio.run(executor._fetch_rewards_via_http([query], [prompt_text], [label]))
        samples.append(make_experience(tiny_tokenizer, prompt_text, response, info, LABEL))
    prm_calls = len(llm.requests)

    trace_path = tmp_path / "traces.jsonl"
    args = cdpa_args(monkeypatch, tiny_model_path, "--cdpa.trace_path", str(trace_path),
                     "--cdpa.trace_sample_rate", "1.0", "--rollout.micro_batch_size", "1")  # fmt: skip
    args.reward.remote_url = [url + "/get_reward"]
    maker = CDPAExperienceMaker(None, None, None, None, FixedKLController(0.0), type("S", (), {"args": args})(),
                                tiny_tokenizer, tracer=CritiqueTracer.from_args(args))  # fmt: skip
    experiences = maker.split_rollout_samples(samples)
    for exp in experiences:
        exp.kl = torch.zeros(exp.action_mask.shape)
    experiences = maker.compute_advantages_and_returns(experiences)

    rows = [(e.advantages[0], e.action_mask[0].bool(), e.info) for e in experiences]
    failed = [info[FAILED_KEY].item() for _, _, info in rows]
    assert failed == [0.0, 0.0, 1.0, 0.0]
    assert (rows[2][0] == 0).all()  # dropped: no advantage, and it does not count in group 1's statistics
    # Group 1 is then sample 3 alone: lone positions everywhere -> zero advantage.
    assert (rows[3][0] == 0).all()
    # Group 0: two responses, where both have tokens +-1/sqrt(2) by the sign of the step-score difference.
    a0, m0, _ = rows[0]
    values = a0[m0][: int(rows[1][1].sum())]
    assert values.abs().sub(1 / math.sqrt(2)).abs().max() < 1e-5
    assert values[0] > 0 and values[-1] < 0  # step 1: 0.8 vs 0.4 (up); step 2 (or lone): 0.2 vs 0.6 (down)

    records = [json.loads(line) for line in trace_path.read_text().splitlines()]
    assert len(records) == 4 and records[0]["prompt_id"] == "travel/3"
    assert records[0]["scores"] == [0.8, 0.2] and records[2]["failed"] is True
    assert [c.splitlines()[0] for c in records[0]["critiques"]] == [
        "Reasoning: The step infers the preference plausibly."
    ] * 2
    assert records[0]["mean_advantage"][0] > 0 > records[0]["mean_advantage"][1]
    assert records[0]["steps"][1].startswith("Go to Lofoten.")
    assert len(llm.requests) == prm_calls  # critiques came from the gateway's cache: nothing was scored again

    assert main(["traces", "show", str(trace_path), "--index", "0", "--no-colour"]) == 0
    shown = capsys.readouterr().out
    assert "Step 1  score +0.80  advantage +0.707" in shown and "critique: Reasoning: The step infers" in shown
