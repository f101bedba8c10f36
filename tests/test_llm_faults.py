"""One sick replica must not stop training, and a backend's bad body is a counted failure, never a crash: several
scripted or hostile replicas on loopback behind one LLMClient, the real gateway, `cdra prm score` and `cdra eval
judge` (cdra_plugin.llm.client, cdra_plugin.llm.dispatch)."""

import asyncio
import json
import threading
import time

import httpx
import pytest
from hostile import HostileLLM, Raw
from llm_helpers import state_of, until
from prm_helpers import reward_body, serving

from cdra_plugin.cli import main
from cdra_plugin.llm.client import FATAL_KINDS, LLMCallError, LLMClient
from cdra_plugin.llm.dispatch import Backend, Dispatcher
from cdra_plugin.stub import Fault, ScriptedLLM, prm_step_judge, score_text

FAST = {"timeout": 2.0, "retries": 2, "backoff": 0.001, "backoff_max": 0.005}
NOT_SERVED = "The model `scripted-prm` does not exist."
NESTED = b"[" * 100_000 + b"]" * 100_000  # past any recursion limit of a JSON parser


async def sample_all(client, prompts, **kwargs):
    try:
        return await asyncio.gather(*(client.sample(p, **kwargs) for p in prompts), return_exceptions=True)
    finally:
        await client.aclose()


async def post_all(url, bodies):
    async with httpx.AsyncClient(timeout=60) as http:
        return await asyncio.gather(*(http.post(url + "/get_reward", json=body) for body in bodies))


@pytest.mark.parametrize("status", [404, 401, 403])
def test_a_replica_that_cannot_serve_the_model_is_taken_out_and_its_calls_go_to_another(status):
    with ScriptedLLM(lambda r: Fault.http(status, NOT_SERVED)) as sick, ScriptedLLM(latency=0.01) as good:
        # no retries at all: going to another replica is not a retry
        client = LLMClient([sick.base_url, good.base_url], "scripted-prm", concurrency=8, breaker_cooldown=60,
                           **{**FAST, "retries": 0})  # fmt: skip
        results = asyncio.run(sample_all(client, [f"p{i}" for i in range(200)]))
    assert not [r for r in results if isinstance(r, Exception)]
    assert len(sick.requests) <= 8  # the calls in flight when the first answer came; then out of rotation
    state = state_of(client, sick.base_url)
    assert state["state"] == "open" and state["opened_by"] == "not_served" and f"HTTP {status}" in state["error"]


def test_when_no_replica_serves_the_model_the_call_fails_at_once_with_a_fatal_kind():
    not_served = lambda r: Fault.http(404, NOT_SERVED)  # noqa: E731
    with ScriptedLLM(not_served) as a, ScriptedLLM(not_served) as b:
        client = LLMClient([a.base_url, b.base_url], "scripted-prm", **{**FAST, "backoff": 5.0, "backoff_max": 5.0})
        started = time.perf_counter()
        [error] = asyncio.run(sample_all(client, ["p"]))
        elapsed = time.perf_counter() - started
        assert len(a.requests) == len(b.requests) == 1
    assert isinstance(error, LLMCallError) and error.kind == "not_served" and error.attempts == 2
    assert error.kind in FATAL_KINDS and "does not exist" in str(error) and elapsed < 2  # no backoff
    assert {s["state"] for s in client.backend_states()} == {"open"}


def test_a_400_caused_by_the_request_is_not_retried_and_leaves_the_replica_in_rotation():
    with ScriptedLLM() as a, ScriptedLLM() as b:
        for llm in (a, b):
            llm.enqueue(Fault.http(400, "This model's maximum context length is 4096 tokens"))
        client = LLMClient([a.base_url, b.base_url], "scripted-prm", **FAST)
        [error] = asyncio.run(sample_all(client, ["a prompt too long"]))
        assert len(a.requests) + len(b.requests) == 1
    assert isinstance(error, LLMCallError) and error.kind == "client_error" and error.attempts == 1
    assert error.kind in FATAL_KINDS and "maximum context length" in str(error)
    assert {s["state"] for s in client.backend_states()} == {"closed"}


def test_a_hung_replica_is_taken_out_probed_and_given_back_when_it_answers():
    hanging = threading.Event()
    hanging.set()
    with (
        ScriptedLLM(lambda r: Fault.hang(30) if hanging.is_set() else score_text(0.5)) as sick,
        ScriptedLLM(latency=0.01) as live,
    ):
        client = LLMClient([sick.base_url, live.base_url], "scripted-prm", concurrency=4, breaker_cooldown=2.0,
                           **{**FAST, "timeout": 0.3})  # fmt: skip

        async def scenario():
            first = await asyncio.gather(*(client.sample(f"a{i}") for i in range(40)))
            opened, wave = state_of(client, sick.base_url), len(sick.requests)
            second = await asyncio.gather(*(client.sample(f"b{i}") for i in range(40)))
            during = len(sick.requests) - wave
            hanging.clear()  # the replica recovers
            await asyncio.sleep(2.1)  # past the cool-down: the next call makes the client probe it
            await client.sample("d")
            await until(lambda: state_of(client, sick.base_url)["state"] == "closed")
            closed = state_of(client, sick.base_url)
            await asyncio.gather(*(client.sample(f"c{i}") for i in range(40)))
            await client.aclose()
            return first + second, opened, wave, during, closed

        results, opened, wave, during, closed = asyncio.run(scenario())
        back = len([r for r in sick.requests if r.prompt.startswith("c")])
    assert all(r.texts == [score_text(0.5)] for r in results)  # every call answered (a timed-out one elsewhere)
    assert opened["state"] == "open" and opened["opened_by"] == "timeout"
    assert wave <= 4 and during == 0  # its slots' worth of calls hung once; while open it got none
    assert closed["state"] == "closed" and back > 0  # given back


def test_when_every_replica_times_out_no_breaker_opens():
    # A slow fleet, not a hung replica: taking one out would only load the others more.
    with ScriptedLLM(lambda r: Fault.hang(1.0)) as a, ScriptedLLM(lambda r: Fault.hang(1.0)) as b:
        client = LLMClient([a.base_url, b.base_url], "scripted-prm", **{**FAST, "timeout": 0.2})
        results = asyncio.run(sample_all(client, [f"p{i}" for i in range(8)]))
    assert all(isinstance(r, LLMCallError) and r.kind == "timeout" for r in results)
    assert {s["state"] for s in client.backend_states()} == {"closed"}


def test_under_load_a_retry_never_goes_back_to_the_replica_that_failed_it():
    # A replica answering 500 at once frees its slots first, so it would take the retries queued elsewhere (work
    # stealing) and fail them again. Its breaker is kept closed here: the rule alone must hold.
    with ScriptedLLM(lambda r: Fault.http(500)) as sick, ScriptedLLM(latency=0.01) as good:
        client = LLMClient([sick.base_url, good.base_url], "scripted-prm", concurrency=4, breaker_failures=10**6,
                           **{**FAST, "retries": 1})  # fmt: skip
        results = asyncio.run(sample_all(client, [f"p{i}" for i in range(400)]))
        retried = {r.prompt for r in sick.requests}
    failed = [r for r in results if isinstance(r, Exception)]
    assert not failed, f"{len(failed)} of 400 failed: {failed[:2]}"
    assert len(retried) > 20 and len(retried) == len(sick.requests)  # each call failed there once at most


def test_the_dispatcher_never_hands_a_retry_to_the_backend_that_failed_it_while_another_is_in_rotation():
    a, b = Backend("http://a/v1", "a"), Backend("http://b/v1", "b")
    dispatcher = Dispatcher([a, b], concurrency=1)

    async def scenario():
        first, second = await dispatcher.acquire(1.0), await dispatcher.acquire(2.0)
        retry = asyncio.ensure_future(dispatcher.acquire(0.5, avoid=first))  # waits for `second`
        await asyncio.sleep(0)
        dispatcher.release(first, "server_error", time.monotonic())  # `first` is idle, but not for this call
        await asyncio.sleep(0)
        assert not retry.done() and first.in_flight == 0
        dispatcher.release(second, "not_served", time.monotonic())  # `second` is out: `first` is all there is
        await asyncio.sleep(0)
        assert second.state == "open" and (await retry) is first

    asyncio.run(scenario())


def test_through_the_gateway_a_404_replica_fails_no_request_and_health_and_metrics_show_it():
    with (
        ScriptedLLM(lambda r: Fault.http(404, NOT_SERVED)) as sick,
        ScriptedLLM(prm_step_judge(), latency=0.01) as good,
        serving([sick.base_url, good.base_url], client={"concurrency": 8}) as (url, _),
    ):
        bodies = [reward_body("\n".join(f"Step {j}: r{i} s{j}" for j in range(1, 5))) for i in range(100)]
        answers = asyncio.run(post_all(url, bodies))  # the default --failure-policy fail
        health = httpx.get(url + "/health", timeout=10)
        metrics = httpx.get(url + "/metrics", timeout=10).text
    assert [a.status_code for a in answers] == [200] * 100
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    entry = next(b for b in health.json()["backends"] if b["backend"] == sick.base_url)
    assert not entry["ok"] and "breaker open) after not_served" in entry["error"] and NOT_SERVED in entry["error"]
    assert f'cdra_prm_backend_state{{backend="{sick.base_url}",state="open"}} 1.0' in metrics
    assert f'cdra_prm_backend_state{{backend="{good.base_url}",state="closed"}} 1.0' in metrics
    assert f'cdra_prm_backend_open{{backend="{sick.base_url}"}} 1.0' in metrics
    assert f'cdra_prm_backend_breaker_opens_total{{backend="{sick.base_url}",reason="not_served"}} 1.0' in metrics
    assert f'cdra_prm_backend_in_flight{{backend="{good.base_url}"}} 0.0' in metrics
    assert "cdra_prm_calls_in_flight 0.0" in metrics


def test_a_body_nested_too_deeply_is_a_counted_failure_through_the_gateway_under_drop():
    with HostileLLM(Raw.body(NESTED)) as llm, serving([llm.base_url], failure_policy="drop") as (url, _):
        answer = httpx.post(url + "/get_reward", json=reward_body("Step 1: a\nStep 2: b"), timeout=30)
        metrics = httpx.get(url + "/metrics", timeout=10).text
    assert answer.status_code == 200, answer.text
    assert answer.json()["extra_logs"]["cdpa_failed"] == [1.0]
    assert 'cdra_prm_step_failures_total{kind="bad_response"} 2.0' in metrics


def test_a_body_nested_too_deeply_does_not_crash_prm_score_or_eval_judge(tmp_path, capsys):
    scored, judged = tmp_path / "scored.jsonl", tmp_path / "judged.jsonl"
    record = {"id": "a", "preference": "P", "question": "q", "response": "Step 1: x\nStep 2: y", "topic": "t",
              "mode": "policy", "model": "m", "sample": 0}  # fmt: skip
    (tmp_path / "in.jsonl").write_text(json.dumps(record) + "\n")
    fast = ["--timeout", "2", "--retries", "1", "--backoff", "0.001", "--backoff-max", "0.002"]
    inp = str(tmp_path / "in.jsonl")
    with HostileLLM(Raw.body(NESTED)) as llm:
        assert main(["prm", "score", "--backend", llm.base_url, "--model", "m", "--input", inp,
                     "--output", str(scored), "--failure-policy", "drop", "--no-progress", *fast]) == 0  # fmt: skip
        # exit 1: a verdict is missing; --skip-health-check: its GET /models answers the same body
        assert main(["eval", "judge", "--responses", inp, "--judge", llm.base_url, "--judge-model", "m", "--output",
                     str(judged), "--checks", "acknowledge", "--skip-health-check", *fast]) == 1  # fmt: skip
    [row] = map(json.loads, scored.read_text().splitlines())
    assert row["outcome"] == "dropped" and {s["failure"] for s in row["steps"]} == {"bad_response"}
    [row] = map(json.loads, judged.read_text().splitlines())
    assert row["verdicts"] == {"acknowledge": None} and row["failures"] == {"acknowledge": "bad_response"}
    assert "Traceback" not in capsys.readouterr().err
