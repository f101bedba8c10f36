"""CDPA end to end on the CPU: policy responses -> the real gateway (scripted PRM behind it) -> OpenRLHF's own reward
client and Experience construction -> the CDPA experience maker -> advantages, logged diagnostics, critique traces.

The trace this writes is the example shipped as ``examples/traces/cdpa_sample.jsonl``; after a deliberate change
of the format, rewrite it with ``CDRA_UPDATE_EXAMPLES=1 pytest tests/test_cdpa_end_to_end.py``."""

import asyncio
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from cdpa_host import cdpa_args, cdpa_maker, make_experience, query_text
from prm_helpers import serving

from cdra_plugin.cdpa.carrier import FAILED_KEY
from cdra_plugin.cdpa.prompts import policy_prompt
from cdra_plugin.cli import main
from cdra_plugin.stub import ScriptedLLM, prm_step_judge

ROOT = Path(__file__).parents[1]
EXAMPLE_TRACE = ROOT / "examples" / "traces" / "cdpa_sample.jsonl"

CROWDS = {"preference": "I avoid crowds.", "question": "Where should I travel in May?", "id": "travel/3", "topic": "t"}
SEASICK = {"preference": "I get seasick.", "question": "A weekend by the sea?", "id": "travel/7", "topic": "t"}
FAST = {"timeout": 0.5, "retries": 1, "backoff": 0.001, "backoff_max": 0.002}
EOT = "<|im_end|>"
RESPONSES = [  # two prompts x G = 2; the tags tell the scripted PRM what to answer for each step
    (CROWDS, "Step 1: You value calm. [score=0.8]\nStep 2: Go to Lofoten in late May. [score=0.2]" + EOT),
    (CROWDS, "Step 1: You like cities. [score=0.4]\nStep 2: Try Rome in spring. [score=0.6]" + EOT),
    (SEASICK, "Step 1: Boats are out. [score=0.5]\nStep 2: A ferry to the Azores. [http=500]" + EOT),  # drop
    (SEASICK, "Step 1: Stay on land. [score=-0.3]\nStep 2: Cliff walks in Cornwall. [score=0.9]" + EOT),
]


@pytest.fixture(scope="module")
def prompt_text(tiny_tokenizer):
    def text(label):
        messages = [{"role": "user", "content": policy_prompt(label["preference"], label["question"])}]
        return tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return {label["id"]: text(label) for label in (CROWDS, SEASICK)}


@pytest.fixture(scope="module")
def gateway_url():
    with ScriptedLLM(prm_step_judge(default=0.5)) as llm:
        with serving([llm.base_url], width=8, client=FAST, failure_policy="drop") as (url, _):
            yield url, llm


def rollout_samples(url, tiny_tokenizer, prompt_text):
    """The four RESPONSES as the host's samples, rewarded through the gateway by OpenRLHF's own reward client."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    executor = SingleTurnAgentExecutor(remote_rm_url=url + "/get_reward")
    samples = []
    for label, response in RESPONSES:  # one reward call per sample, as the vLLM actors make them
        prompt = prompt_text[label["id"]]
        query = query_text(tiny_tokenizer, prompt, response)
        [info] = asyncio.run(executor._fetch_rewards_via_http([query], [prompt], [json.dumps(label)]))
        samples.append(make_experience(tiny_tokenizer, prompt, response, info, label))
    return samples


def cdpa_batch(monkeypatch, url, samples, tiny_model_path, tiny_tokenizer, *options: str):
    """The samples through the CDPA experience maker (the host's split; KL 0: the model forwards need GPUs)."""
    from cdra_plugin.openrlhf.tracer import CritiqueTracer

    args = cdpa_args(monkeypatch, tiny_model_path, "--rollout.micro_batch_size", "1", *options)
    # two gateways, the first one down: the tracer asks each in turn for its cached critiques
    args.reward.remote_url = ["http://127.0.0.1:9/get_reward", url + "/get_reward"]
    maker = cdpa_maker(args, tiny_tokenizer, tracer=CritiqueTracer.from_args(args))
    experiences = maker.split_rollout_samples(samples)
    for exp in experiences:
        exp.kl = torch.zeros(exp.action_mask.shape)
    return maker.compute_advantages_and_returns(experiences)


def test_cdpa_from_gateway_to_advantages_and_traces(monkeypatch, tmp_path, capsys, gateway_url, tiny_model_path,
                                                     tiny_tokenizer, prompt_text):  # fmt: skip
    url, llm = gateway_url
    trace_path = tmp_path / "traces.jsonl"
    samples = rollout_samples(url, tiny_tokenizer, prompt_text)
    prm_calls = len(llm.requests)
    experiences = cdpa_batch(monkeypatch, url, samples, tiny_model_path, tiny_tokenizer,
                             "--cdpa.trace_path", str(trace_path), "--cdpa.trace_sample_rate", "1.0")  # fmt: skip

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
    assert records[2]["scores"] == [None, None] and records[2]["mean_advantage"] == [0.0, 0.0]
    assert records[0]["steps"][1] == "Go to Lofoten in late May. [score=0.2]"  # the end-of-sequence token removed
    assert [r["prompt_id"] for r in records] == ["travel/3", "travel/3", "travel/7", "travel/7"]
    assert len(llm.requests) == prm_calls  # critiques came from the gateway's cache: nothing was scored again

    assert main(["traces", "show", str(trace_path), "--index", "0", "--no-colour"]) == 0
    shown = capsys.readouterr().out
    assert "Step 1  score +0.80  advantage +0.707" in shown and "critique: Reasoning: The step infers" in shown

    written = trace_path.read_text(encoding="utf-8")
    if os.environ.get("CDRA_UPDATE_EXAMPLES") == "1":
        EXAMPLE_TRACE.write_text(written, encoding="utf-8")
    assert EXAMPLE_TRACE.read_text(encoding="utf-8") == written, (
        f"{EXAMPLE_TRACE.relative_to(ROOT)} is not what the tracer writes now; if the change is meant, rewrite it: "
        "CDRA_UPDATE_EXAMPLES=1 pytest tests/test_cdpa_end_to_end.py"
    )


def test_the_diagnostics_that_reach_the_training_logs_are_documented(
    monkeypatch, gateway_url, tiny_model_path, tiny_tokenizer, prompt_text
):
    """Every info entry survives the host's replay buffer as one number per sample (the actor's training_step logs
    each as a sample-weighted metric, wandb/TensorBoard as train/<key>); the cdpa_*/prm_* ones are docs/training.md's.
    """
    from openrlhf.trainer.ppo_utils.experience import (
        make_experience_batch,
        remove_padding_in_sequences,
        split_experience_batch,
    )

    url, _ = gateway_url
    samples = rollout_samples(url, tiny_tokenizer, prompt_text)
    experiences = cdpa_batch(monkeypatch, url, samples, tiny_model_path, tiny_tokenizer)
    items = [item for exp in experiences for item in remove_padding_in_sequences(split_experience_batch(exp))]
    batch = make_experience_batch(items)  # what NaiveReplayBuffer.append + sample do
    for key, values in batch.info.items():
        assert len(values) == len(items) and all(torch.as_tensor(v).numel() == 1 for v in values), key
    logged = {key for key in batch.info if key.startswith(("cdpa_", "prm_"))}
    manual = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = manual[manual.index("### Diagnostics") :].split("\n### ", 1)[0]
    documented = set(re.findall(r"`train/((?:cdpa|prm)_\w+)`", section))
    # group_steps and process modes log cdpa_flat_step_group_frac in place of the two *_position_frac
    assert logged | {"cdpa_flat_step_group_frac"} == documented
