"""Streaming step scoring (``cdra_plugin.openrlhf.stream``): the executor against an engine stand-in that streams
vLLM's own ``RequestOutput``s token by token (``scripts/sim/rollout.py``), the host's ``RolloutRayActor.generate``
around it, and the real gateway over the scripted PRM.

What is shown: the executor generates what OpenRLHF's single-turn executor generates, and its samples get the same
rewards, step scores and carrier fields (here and through the host's ``Experience``); steps reach the PRM before the
last token, none twice; a failed early call is recovered at the final call; a cancelled generation leaves no task.
"""

import asyncio
import json
import time

import httpx
import pytest
from prm_helpers import serving
from sim.rollout import Script, ScriptedEngine, rollout_actor

from cdra_plugin.cdpa.prompts import policy_prompt, prm_prompt
from cdra_plugin.stub import Fault

P, Q = "I avoid crowds.", "Where should I travel in May?"
LABEL = json.dumps({"preference": P, "question": Q, "id": "s1"})
RESPONSES = [
    "Sure.\nStep 1: quiet towns [score=0.2]\nStep 2: shoulder season [score=0.6]\nStep 3: Lofoten [score=0.9]",
    "Step 1: a [score=-0.3]\r\n\r\n**Step 2:**\n\nStep 3 (why): b [score=0.1]\nFinal Answer: go [score=0.4]",
    "No markers at all [score=-0.4]",
    "Step 1: long [score=0.5]\nStep 2: " + "word " * 40 + "[score=0.7]\nStep 3: cut off here " + "more " * 40,
]
DROP = {"failure_policy": "drop", "width": 8}


@pytest.fixture(scope="module")
def prompt(tiny_tokenizer):
    messages = [{"role": "user", "content": policy_prompt(P, Q)}]
    return tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def sampling(max_tokens=None):
    from vllm import SamplingParams

    return SamplingParams(temperature=1.0, max_tokens=max_tokens, skip_special_tokens=False, logprobs=1)


def engine_for(tokenizer, responses, token_s=0.0, stride=1):
    """An engine generating ``responses`` in order, one per request."""
    queue = list(responses)
    return ScriptedEngine(tokenizer, lambda ids: Script(queue.pop(0), token_s=token_s), stride=stride)


async def generate(executor, tokenizer, prompt, engine, params, n=1):
    actor = rollout_actor(engine)
    try:
        return await asyncio.gather(
            *(executor.execute(prompt, LABEL, params, 4096, tokenizer, actor) for _ in range(n))
        )
    finally:
        if hasattr(executor, "aclose"):
            await executor.aclose()


def metric(url, name):
    text = httpx.get(url + "/metrics").text
    lines = [line for line in text.splitlines() if line.startswith(name)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_streaming_generates_and_rewards_exactly_as_the_host(prm, tiny_tokenizer, prompt):
    """Same token ids, log-probs, truncation, action ranges, rewards, step scores and carrier fields, with and
    without streaming (a deterministic PRM, a fresh gateway each), and the same host Experiences."""
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from cdra_plugin.openrlhf.stream import AgentExecutor

    params = sampling(max_tokens=60)  # the last response is cut: finish_reason "length"
    with serving([prm.base_url], **DROP) as (host_url, _), serving([prm.base_url], **DROP) as (stream_url, _):
        host = asyncio.run(generate(SingleTurnAgentExecutor(host_url + "/get_reward"), tiny_tokenizer, prompt,
                                    engine_for(tiny_tokenizer, RESPONSES), params, n=len(RESPONSES)))  # fmt: skip
        host_calls = [r.prompt for r in prm.requests]
        streamed = asyncio.run(generate(AgentExecutor(stream_url + "/get_reward"), tiny_tokenizer, prompt,
                                        engine_for(tiny_tokenizer, RESPONSES), params, n=len(RESPONSES)))  # fmt: skip
        stream_calls = [r.prompt for r in prm.requests][len(host_calls) :]
        early = metric(stream_url, 'cdra_prm_early_steps_total{outcome="scored"}')
    assert [o["truncated"] for o in host] == [False, False, False, True]
    assert all(o["reward"] is not None for o in host)
    assert streamed == host
    assert early >= 4  # it did stream: steps were scored early (the rest of the test is the point)
    assert sorted(stream_calls) == sorted(host_calls)  # the same PRM calls: the truncated sample wasted none
    for mine, theirs in zip(streamed, host, strict=True):
        a = SamplesGenerator._process_response_into_experience(None, mine, max_len=4096)
        b = SamplesGenerator._process_response_into_experience(None, theirs, max_len=4096)
        assert a.rewards.tolist() == b.rewards.tolist() and a.scores.tolist() == b.scores.tolist()
        assert a.info.keys() == b.info.keys() and all(a.info[k].tolist() == b.info[k].tolist() for k in a.info)
        assert a.sequences.tolist() == b.sequences.tolist() and a.action_mask.tolist() == b.action_mask.tolist()
        assert a.rollout_log_probs.tolist() == b.rollout_log_probs.tolist()


def test_steps_reach_the_prm_before_the_last_token_and_none_twice(prm, tiny_tokenizer, prompt):
    from cdra_plugin.openrlhf.stream import AgentExecutor

    response = "\n".join(f"Step {j}: part {j} " + "more " * 10 + f"[score=0.{j}]" for j in range(1, 5))
    engine = engine_for(tiny_tokenizer, [response], token_s=0.01)
    last_token = []
    generate_stream = engine.generate

    async def timed(*args, **kwargs):  # when the engine yields its last token
        async for output in generate_stream(*args, **kwargs):
            if output.finished:
                last_token.append(time.monotonic())
            yield output

    engine.generate = timed
    with serving([prm.base_url], **DROP) as (url, _):
        [out] = asyncio.run(generate(AgentExecutor(url + "/get_reward"), tiny_tokenizer, prompt, engine, sampling()))
        served = metric(url, 'cdra_prm_step_lookups_total{call="final",result="hit"}')
        served += metric(url, 'cdra_prm_step_lookups_total{call="final",result="joined"}')
        early = metric(url, 'cdra_prm_early_steps_total{outcome="scored"}')
        wait = metric(url, "cdra_prm_reward_wait_seconds_count")
    bodies = [line.split(": ", 1)[1] for line in response.split("\n")]
    expected = [prm_prompt(P, Q, bodies[: j + 1]) for j in range(4)]
    sent = [r.prompt for r in prm.requests]
    assert sorted(sent) == sorted(expected)  # every step once: the final call paid for the last one only
    by_prompt = {r.prompt: r.received_at for r in prm.requests}
    assert all(by_prompt[p] < last_token[0] for p in expected[:3])  # steps 1-3 while the policy still wrote
    assert by_prompt[expected[3]] > last_token[0]
    assert out["reward"] == pytest.approx(out["extra_logs"]["prm_min_step_score"])  # the default reward: min
    assert early == 3 and served == 3 and wait == 1


def test_a_failed_early_call_is_scored_again_at_the_final_call(prm, tiny_tokenizer, prompt):
    from cdra_plugin.openrlhf.stream import AgentExecutor

    response = "Step 1: a [score=0.3]\nStep 2: b " + "more " * 20 + "[score=-0.2]"
    with serving([prm.base_url], **DROP, client={"retries": 1}) as (url, _):
        prm.enqueue(Fault.http(500), Fault.http(500))  # step 1's early call: both attempts fail
        engine = engine_for(tiny_tokenizer, [response], token_s=0.01)
        [out] = asyncio.run(generate(AgentExecutor(url + "/get_reward"), tiny_tokenizer, prompt, engine, sampling()))
        failed = metric(url, 'cdra_prm_early_steps_total{outcome="failed"}')
    assert failed == 1
    logs = out["extra_logs"]  # per-sample lists, as the gateway answers them
    assert logs["cdpa_failed"] == [0.0] and logs["prm_failures"] == [0.0]
    assert [logs[f"cdpa_step_0{j}"][0] for j in range(2)] == pytest.approx([0.3, -0.2])
    assert len(prm.requests) == 2 + 2  # the early call's two attempts, then step 1 again and step 2


def test_an_unreachable_early_endpoint_costs_nothing_but_the_early_calls(prm, tiny_tokenizer, prompt, unused_port):
    from cdra_plugin.openrlhf.stream import AgentExecutor

    response = "Step 1: a [score=0.3]\nStep 2: b [score=0.1]\nStep 3: c"
    with serving([prm.base_url], **DROP) as (url, _):
        executor = AgentExecutor(url + "/get_reward")
        executor.prefix_url = f"http://127.0.0.1:{unused_port}/score_prefix"  # every early call fails to connect
        [out] = asyncio.run(
            generate(executor, tiny_tokenizer, prompt, engine_for(tiny_tokenizer, [response]), sampling())
        )
    assert out["extra_logs"]["cdpa_num_steps"] == [3.0] and out["extra_logs"]["prm_failures"] == [0.0]
    assert len(prm.requests) == 3


def test_a_cancelled_generation_leaves_no_task_running(prm, tiny_tokenizer, prompt):
    from cdra_plugin.openrlhf.stream import AgentExecutor

    response = "Step 1: a\nStep 2: b\nStep 3: c " + "more " * 200
    engine = engine_for(tiny_tokenizer, [response], token_s=0.01)

    async def run(url):
        executor = AgentExecutor(url + "/get_reward")
        prm.enqueue(Fault.hang(5.0), Fault.hang(5.0))  # the early calls hang in the PRM
        task = asyncio.create_task(
            executor.execute(prompt, LABEL, sampling(), 4096, tiny_tokenizer, rollout_actor(engine))
        )
        while len(prm.requests) < 2:  # steps 1 and 2 are in flight
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        left = asyncio.all_tasks() - {asyncio.current_task()}
        await executor.aclose()
        return left

    with serving([prm.base_url], **DROP, client={"timeout": 10}) as (url, _):
        assert asyncio.run(run(url)) == set()
    assert engine.requests == 1 and engine.aborted == 1  # the engine was told, as vLLM aborts the request


def test_the_executor_without_a_gateway_says_how_to_get_one(tiny_tokenizer, prompt):
    from openrlhf.trainer.ray.vllm_engine import _load_agent_executor

    from cdra_plugin.openrlhf.stream import AGENT_FILE

    executor = _load_agent_executor(AGENT_FILE)  # as the host loads --train.agent_func_path: AgentExecutor()
    engine = engine_for(tiny_tokenizer, ["Step 1: a"])
    with pytest.raises(RuntimeError, match="--cdpa.stream_scoring"):
        asyncio.run(generate(executor, tiny_tokenizer, prompt, engine, sampling()))
    assert engine.requests == 0


def test_each_rollout_actor_is_bound_to_one_gateway(tiny_tokenizer):
    from openrlhf.trainer.ray.vllm_engine import _load_agent_executor

    from cdra_plugin.openrlhf.stream import AGENT_FILE, bind_to_gateway

    urls = ["http://a:1/get_reward", "http://b:2/get_reward"]
    bound = []
    for i in range(3):
        actor = rollout_actor(engine_for(tiny_tokenizer, []))
        actor.executor = _load_agent_executor(AGENT_FILE)
        bind_to_gateway(actor, urls, i)
        bound.append((actor.executor.reward_endpoints, actor.executor.prefix_url))
    assert bound == [([urls[0]], "http://a:1/score_prefix"), ([urls[1]], "http://b:2/score_prefix"),
                     ([urls[0]], "http://a:1/score_prefix")]  # fmt: skip
    actor.executor = object()
    with pytest.raises(TypeError, match="not .*stream.py"):
        bind_to_gateway(actor, urls, 0)


# ---------------------------------------------------------------- the gateway's side: POST /score_prefix


def test_score_prefix_scores_the_completed_steps_only(prm):
    from prm_helpers import post, reward_body

    with serving([prm.base_url], **DROP) as (url, _):
        out = post(url, "/score_prefix", reward_body("Step 1: a [score=0.2]\nStep 2: b [score=0.4]\nStep 3: c"))
        assert out.status_code == 200, out.text
        assert out.json() == {"results": [{"completed_steps": 2, "scores": [0.2, 0.4]}]}
        assert post(url, "/score_prefix", reward_body("Step 1: a\nStep 2:")).json()["results"][0] == {
            "completed_steps": 0, "scores": []
        }  # fmt: skip
        bad = post(url, "/score_prefix", {"query": ["x"], "prompts": ["y"]})
        assert bad.status_code == 400 and "labels" in bad.json()["detail"]
        assert len(prm.requests) == 2
        final = post(
            url, "/get_reward", reward_body("Step 1: a [score=0.2]\nStep 2: b [score=0.4]\nStep 3: c [score=0.6]")
        )
        assert final.json()["extra_logs"]["prm_num_steps"] == [3.0]
        assert len(prm.requests) == 3  # steps 1-2 from the step cache
        assert metric(url, 'cdra_prm_step_lookups_total{call="final",result="hit"}') == 2
        assert metric(url, 'cdra_prm_step_lookups_total{call="final",result="miss"}') == 1
        assert metric(url, "cdra_prm_step_cache_bytes") > 0


def test_a_final_call_that_joined_a_failing_early_call_scores_the_step_itself(prm):
    from prm_helpers import reward_body

    async def both(url):
        async with httpx.AsyncClient(timeout=10) as client:
            early = asyncio.create_task(
                client.post(url + "/score_prefix", json=reward_body("Step 1: a [score=0.3]\nStep 2: b"))
            )
            await asyncio.sleep(0.2)  # step 1's early PRM call is hanging now; the final call joins it
            final = await client.post(
                url + "/get_reward", json=reward_body("Step 1: a [score=0.3]\nStep 2: b [score=0.1]")
            )
            return (await early).json(), final.json()

    with serving([prm.base_url], **DROP, client={"retries": 0, "timeout": 0.5}) as (url, _):
        prm.enqueue(Fault.hang(3.0))  # step 1's early call times out
        early, final = asyncio.run(both(url))
        joined = metric(url, 'cdra_prm_step_lookups_total{call="final",result="joined"}')
    assert early["results"] == [{"completed_steps": 1, "scores": [None]}]
    assert joined == 1 and final["extra_logs"]["prm_failures"] == [0.0]
    assert final["extra_logs"]["cdpa_step_00"] == [0.3] and final["extra_logs"]["cdpa_step_01"] == [0.1]
    assert len(prm.requests) == 3  # step 1 early (timed out), step 1 again by the final call, step 2


# ---------------------------------------------------------------- switching it on: cdra-train --cdpa.stream_scoring
GATEWAYS = "http://127.0.0.1:5000/get_reward,http://127.0.0.1:5001/get_reward"


def train_argv(model_path, estimator="group_norm", *extra):
    return ["--actor.model_name_or_path", str(model_path), "--algo.advantage.estimator", estimator,
            "--rollout.n_samples_per_prompt", "2", "--rollout.micro_batch_size", "8", *extra]  # fmt: skip


@pytest.mark.parametrize("estimator", ["group_norm", "cdpa"])
def test_cdra_train_sets_the_host_agent_path_for_any_estimator(monkeypatch, tiny_model_path, estimator):
    from cdpa_host import host_args

    from cdra_plugin.openrlhf.stream import AGENT_FILE

    argv = train_argv(tiny_model_path, estimator, "--cdpa.stream_scoring", "--reward.remote_url", GATEWAYS)
    args = host_args(monkeypatch, argv)
    assert args.train.agent_func_path == AGENT_FILE
    assert args.reward.remote_url == ["agent"]  # the host's mark for an agent path; the launcher gives them back


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--cdpa.stream_scoring sends completed steps to the gateways of --reward.remote_url"),
        (["--reward.remote_url", "http://h:1/score"], "http://HOST:PORT/get_reward"),
        (["--reward.remote_url", "reward.py"], "http://HOST:PORT/get_reward"),
        (["--reward.remote_url", GATEWAYS, "--train.agent_func_path", "a.py"], "drop --train.agent_func_path"),
    ],
)
def test_cdra_train_stream_errors_name_the_option(monkeypatch, capsys, tiny_model_path, extra, message):
    from cdpa_host import host_args

    with pytest.raises(SystemExit) as exit_info:
        host_args(monkeypatch, train_argv(tiny_model_path, "group_norm", "--cdpa.stream_scoring", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cdra_train_refuses_a_host_that_does_not_stream_in_one_line(monkeypatch, capsys, tiny_model_path):
    import vllm

    from cdra_plugin.openrlhf import train

    async def generate(self, prompt, sampling_params, request_id):  # a host whose engine answers once, at the end
        return None

    monkeypatch.setattr(vllm.AsyncLLMEngine, "generate", generate)
    argv = train_argv(tiny_model_path, "group_norm", "--cdpa.stream_scoring", "--reward.remote_url", GATEWAYS)
    with pytest.raises(SystemExit) as exit_info:
        train.run(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "openrlhf==0.11.2" in err and "AsyncLLMEngine.generate is a stream" in err
