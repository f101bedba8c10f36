"""LLMClient against the scripted server: concurrency cap, formats, retries, non-retried errors, the API key, usage;
against a hostile server: every transport or protocol fault is a counted failure kind, within the call's deadline.

Scheduling (priority, affinity) and the circuit breaker are in tests/test_llm_dispatch.py.
"""

import asyncio
import json
import time

import pytest
from hostile import HostileLLM, Raw, completion_json

from cdra_plugin.llm.client import LLMCallError, LLMClient
from cdra_plugin.llm.options import normalize_base_url, public_url
from cdra_plugin.prm.metrics import Metrics
from cdra_plugin.stub import Fault, ScriptedLLM, score_text

FAST = {"timeout": 0.5, "retries": 2, "backoff": 0.001, "backoff_max": 0.005}


def run(coro):
    return asyncio.run(coro)


def sample_once(client, prompt="p", **kwargs):
    """One ``sample`` call in a fresh event loop, closing the client afterwards."""

    async def go():
        try:
            return await client.sample(prompt, **kwargs)
        finally:
            await client.aclose()

    return run(go())


async def _sample_many(client, prompts, n=1):
    try:
        return await asyncio.gather(*(client.sample(p, n=n) for p in prompts))
    finally:
        await client.aclose()


def test_concurrency_is_capped_per_backend_and_calls_are_balanced():
    with ScriptedLLM(latency=0.1) as a, ScriptedLLM(latency=0.1) as b:
        client = LLMClient([a.base_url, b.base_url], "scripted-prm", concurrency=3, **FAST)
        started = time.perf_counter()
        out = run(_sample_many(client, [f"p{i}" for i in range(24)]))
        elapsed = time.perf_counter() - started
    assert [c.texts for c in out] == [[score_text(0.5)]] * 24
    assert a.max_active == 3 and b.max_active == 3
    assert len(a.requests) == len(b.requests) == 12
    assert elapsed >= 0.4  # 24 calls, 6 at a time, 0.1 s each


def test_completion_format_and_sampling_parameters():
    with ScriptedLLM() as llm:
        client = LLMClient([llm.base_url], "scripted-prm", prompt_format="completion", temperature=0.7,
                           max_tokens=64, **FAST)  # fmt: skip
        [completion] = run(_sample_many(client, ["raw prompt"], n=2))
    [request] = llm.requests
    assert request.endpoint == "completions" and request.body["prompt"] == "raw prompt"
    assert request.body["n"] == 2 and request.body["temperature"] == 0.7 and request.body["max_tokens"] == 64
    assert completion.texts == [score_text(0.5)] * 2 and completion.attempts == 1


@pytest.mark.parametrize(
    "faults, kind, attempts",
    [
        ([Fault.http(500)] * 3, "server_error", 3),
        ([Fault.http(429)] * 3, "rate_limited", 3),
        ([Fault.hang(2.0)] * 3, "timeout", 3),
        ([Fault.http(404)], "not_served", 1),  # the only replica cannot serve the model: no retry helps
        ([Fault.http(401)], "not_served", 1),
        ([Fault.http(400)], "client_error", 1),  # the request itself: not retried
        ([Fault.http(422)], "client_error", 1),
        (["no score"] * 3, "unparsable", 3),
        ([["SCORE: 0.1", "SCORE: 0.2"]] * 3, "bad_response", 3),  # 2 choices for n=1
    ],
)
def test_failures_after_retries_raise_with_their_kind(faults, kind, attempts):
    with ScriptedLLM() as llm:
        llm.enqueue(*faults)
        client = LLMClient([llm.base_url], "scripted-prm", **FAST)
        check = lambda texts: None if "SCORE" in texts[0] else "no score"  # noqa: E731
        with pytest.raises(LLMCallError) as err:
            sample_once(client, check=check)
        assert len(llm.requests) == attempts
    assert err.value.kind == kind and err.value.attempts == attempts


def test_connection_errors_are_retried_then_reported():
    llm = ScriptedLLM().start()
    url = llm.base_url
    llm.stop()
    client = LLMClient([url], "scripted-prm", **FAST)
    with pytest.raises(LLMCallError) as err:
        sample_once(client)
    assert err.value.kind == "connection" and err.value.attempts == 3


def test_api_key_is_sent_as_bearer_and_redacted_from_errors(monkeypatch):
    secret = "sk-test-very-secret-0042"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hosted-key-must-not-leak")
    with ScriptedLLM() as llm:
        llm.enqueue(Fault.http(400, message=f"invalid key {secret}"))
        client = LLMClient([llm.base_url], "scripted-prm", api_key=secret, **FAST)
        with pytest.raises(LLMCallError) as err:
            sample_once(client)
        sample_once(LLMClient([llm.base_url], "scripted-prm", **FAST))  # no key given
        assert [r.headers["authorization"] for r in llm.requests] == [f"Bearer {secret}", "Bearer EMPTY"]
    assert secret not in str(err.value) and "invalid key ***" in str(err.value)


def test_base_urls_are_normalized_and_checked():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("https://api.openai.com/v1/") == "https://api.openai.com/v1"
    with pytest.raises(ValueError, match="--backend 'h:8000'"):
        normalize_base_url("h:8000")
    # the endpoint's path is appended to the base URL: a query would swallow it (the call went to /v1?k=...)
    with pytest.raises(ValueError, match="no query string") as err:
        normalize_base_url("http://user:pw@h:8000/v1?key=s3cret", "--judge")
    assert "s3cret" not in str(err.value) and "pw" not in str(err.value)
    assert str(err.value).startswith("--judge 'http://h:8000/v1'")
    assert normalize_base_url("http://h:8000/v1#frag") == "http://h:8000/v1"  # a fragment is never sent: dropped
    assert public_url("http://u:pw@[::1]:8000/v1?k=s") == "http://[::1]:8000/v1"  # the label of an IPv6 backend
    # credentials in the URL were never sent (aiohttp refuses them beside the bearer header): every call failed as
    # "connection" and opened the breaker
    with pytest.raises(ValueError, match="no user:password@") as err:
        normalize_base_url("http://user:pw@h:8000/v1", "--evaluator")
    assert "pw" not in str(err.value) and str(err.value).startswith("--evaluator 'http://h:8000/v1'")


def test_a_retry_after_a_rejected_answer_samples_at_a_temperature_above_zero():
    with ScriptedLLM() as llm:
        llm.enqueue("no score", score_text(0.4))
        client = LLMClient([llm.base_url], "scripted-prm", temperature=0.0, retry_temperature=0.9, **FAST)
        completion = sample_once(client, check=lambda texts: None if "SCORE" in texts[0] else "no score")
    assert [r.body["temperature"] for r in llm.requests] == [0.0, 0.9]
    assert completion.attempts == 2


def test_per_call_sampling_overrides_and_token_usage():
    with ScriptedLLM() as llm:
        client = LLMClient([llm.base_url], "scripted-prm", temperature=0.0, max_tokens=64, **FAST)
        completion = sample_once(client, "three word prompt", temperature=1.0, seed=7)
    [request] = llm.requests
    assert request.body["temperature"] == 1.0 and request.body["seed"] == 7 and request.body["max_tokens"] == 64
    assert completion.usage.prompt_tokens == 3 and completion.usage.completion_tokens > 0


GOOD = completion_json(score_text(0.5))


@pytest.mark.parametrize(
    "behaviour, kind",
    [
        (Raw.body(GOOD[:25]), "bad_response"),  # a 200 whose JSON is cut short
        (Raw.body(b"<html>502 Bad Gateway</html>"), "bad_response"),  # not JSON
        (Raw.body(b"\xff\xfe{}"), "bad_response"),  # not UTF-8
        (Raw.body(b'{"choices": [{"message": {"content": 5}}]}'), "bad_response"),  # wrong types
        (Raw.body(b'{"choices": {"0": "x"}}'), "bad_response"),
        (Raw.body(b"[1, 2]"), "bad_response"),
        (Raw.body(b"null"), "bad_response"),
        (Raw.body(b"[" * 100_000 + b"]" * 100_000), "bad_response"),  # nested past any recursion limit
        (Raw.body(b'{"error": ' * 100_000 + b"1" + b"}" * 100_000, status=500), "server_error"),
        (Raw.body(b'{"error": "gone"}', status=503), "server_error"),
        (Raw.cut(GOOD), "connection"),  # the connection closes halfway through the body
        (Raw.close(), "connection"),  # no answer at all
        (Raw.garbage(), "connection"),  # not HTTP
    ],
)
def test_every_fault_of_a_backend_is_a_counted_failure_of_a_named_kind(behaviour, kind):
    metrics = Metrics()
    with HostileLLM(behaviour) as llm:
        client = LLMClient([llm.base_url], "m", metrics=metrics, **FAST)
        with pytest.raises(LLMCallError) as err:
            sample_once(client)
        assert llm.requests == 3
    assert err.value.kind == kind and err.value.attempts == 3
    labels = {"backend": client.backends[0].label, "outcome": kind}
    assert metrics.registry.get_sample_value("cdra_prm_calls_total", labels) == 3


def test_a_retry_after_a_cut_short_answer_succeeds():
    with HostileLLM(Raw.body(GOOD[:40]), Raw.body(GOOD)) as llm:
        completion = sample_once(LLMClient([llm.base_url], "m", **FAST))
    assert completion.texts == [score_text(0.5)] and completion.attempts == 2


def test_the_timeout_is_a_deadline_for_the_whole_call_not_for_each_read():
    # 0.1 s between bytes never trips a per-read timeout of 0.5 s; the body takes far longer than the deadline.
    assert len(GOOD) * 0.1 > 8
    with HostileLLM(Raw.trickle(GOOD, interval=0.1)) as llm:
        client = LLMClient([llm.base_url], "m", **{**FAST, "retries": 0})
        started = time.perf_counter()
        with pytest.raises(LLMCallError) as err:
            sample_once(client)
        elapsed = time.perf_counter() - started
    assert err.value.kind == "timeout" and "0.5 s deadline" in str(err.value)
    assert elapsed < 1.5


def test_error_bodies_are_reported_without_the_api_key():
    secret = "sk-never-in-errors-77"
    body = json.dumps({"error": {"message": f"bad request for key {secret}"}}).encode()
    with HostileLLM(Raw.body(body, status=400)) as llm:
        with pytest.raises(LLMCallError) as err:
            sample_once(LLMClient([llm.base_url], "m", api_key=secret, **FAST))
    assert err.value.kind == "client_error" and "bad request for key ***" in str(err.value)
    assert secret not in str(err.value)


def test_the_scripted_server_speaks_openais_api_to_the_real_openai_client():
    """The test double is held to the reference client, so what LLMClient is tested against is OpenAI's API."""
    import openai

    with ScriptedLLM(lambda request: score_text(0.5)) as llm:
        reference = openai.OpenAI(base_url=llm.base_url, api_key="EMPTY", max_retries=0)
        chat = reference.chat.completions.create(
            model="scripted-prm", messages=[{"role": "user", "content": "two words"}], n=2, temperature=1.0
        )
        text = reference.completions.create(model="scripted-prm", prompt="three words here", max_tokens=8)
        models = reference.models.list()
        ours = run(LLMClient([llm.base_url], "scripted-prm", **FAST).sample("two words", n=2, temperature=1.0))
    assert [c.message.content for c in chat.choices] == ours.texts == [score_text(0.5)] * 2
    assert chat.usage.prompt_tokens == ours.usage.prompt_tokens == 2
    assert text.choices[0].text == score_text(0.5) and [m.id for m in models.data] == ["scripted-prm"]
    assert llm.requests[0].body["messages"] == llm.requests[2].body["messages"]  # the same request on the wire
