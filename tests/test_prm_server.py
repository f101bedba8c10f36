"""What a client can do to the gateway: hostile JSON, disconnects, ids in errors, resource limits, and the metrics of
failed batches. The real app on a loopback port; raw sockets where a client misbehaves below HTTP."""

import json
import logging
import socket
import time

import httpx
import pytest
from prm_helpers import PROMPT, Q, post, reward_body, serving


def raw(body: str) -> bytes:
    return body.encode("utf-8", "surrogatepass")


HOSTILE_JSON = [
    ("nested", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("long integer", raw('{"query": [' + "9" * 5000 + "]}"), "more than 4300 digits"),
    ("surrogate in query", raw(json.dumps(reward_body("Step 1: a\ud800"))), "query[0] holds a lone surrogate"),
    ("surrogate in label", raw(json.dumps(reward_body("a", label={"preference": "p\udfff", "question": Q}))),
     "labels[0] holds a lone surrogate"),
    ("deep label", raw(json.dumps(reward_body("a", label={"preference": "p", "question": Q, "x": [[[[[[[[[[[[[[[[[[
        1]]]]]]]]]]]]]]]]]]}))), "labels[0] nests deeper than 16"),
]  # fmt: skip


@pytest.mark.parametrize("body, message", [h[1:] for h in HOSTILE_JSON], ids=[h[0] for h in HOSTILE_JSON])
def test_hostile_json_gets_400_not_500(prm, body, message):
    with serving([prm.base_url]) as (url, _):
        response = httpx.post(url + "/get_reward", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and message in response.json()["detail"], response.text
        assert post(url, "/get_reward", reward_body("Step 1: a")).status_code == 200
        assert 'status="500"' not in httpx.get(url + "/metrics").text
    assert len(prm.requests) == 1


def test_a_client_that_disconnects_is_one_quiet_line(prm, caplog):
    caplog.set_level(logging.INFO)
    with serving([prm.base_url]) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b'POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"query": [')
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while 'endpoint="get_reward"' not in (metrics := httpx.get(url + "/metrics").text):
            assert time.monotonic() < deadline, "the disconnect was never counted"
            time.sleep(0.05)
    assert 'cdra_prm_http_requests_total{endpoint="get_reward",status="disconnected"} 1.0' in metrics
    mine = [r for r in caplog.records if r.name.startswith(("cdra", "uvicorn"))]
    assert [r.getMessage() for r in mine] == ["get_reward: the client disconnected before its request body arrived"]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in mine)


def test_no_api_schema_or_docs_are_served(prm):
    with serving([prm.base_url]) as (url, _):
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert httpx.get(url + path).status_code == 404
    with serving([prm.base_url], auth_token="t") as (url, _):
        assert httpx.get(url + "/openapi.json").status_code == 404


def test_ids_echoed_in_errors_are_truncated(prm):
    long_id = "x" * 10_000
    label = json.dumps({"preference": "p", "question": Q, "id": long_id})
    with serving([prm.base_url], failure_policy="fail") as (url, _):
        failed = post(url, "/get_reward", reward_body("Step 1: a [http=500]", label=label))
        bad = post(url, "/score", {**reward_body("Step 1: a"), "cache_only": long_id})
    assert failed.status_code == 502 and len(failed.text) < 800 and "xxx..." in failed.json()["detail"]
    assert bad.status_code == 400 and len(bad.text) < 300


def test_the_cache_is_bounded_in_bytes(prm):
    long = "\n".join(f"Step {k}: " + "y" * 5_000 + f" {k}" for k in range(1, 5))  # about 20 KB of step text
    with serving([prm.base_url], cache_mb=0.05) as (url, gateway):  # 52 KB
        for i in range(6):
            assert post(url, "/get_reward", reward_body(long + f" v{i}")).status_code == 200
            assert gateway.cache.nbytes <= 0.05 * (1 << 20)
        assert 1 <= len(gateway.cache) <= 2
        metrics = httpx.get(url + "/metrics").text
        assert f"cdra_prm_cache_bytes {float(gateway.cache.nbytes)}" in metrics
    with serving([prm.base_url], cache_mb=0.01) as (url, gateway):  # one result is larger than the cache
        post(url, "/get_reward", reward_body(long))
        assert len(gateway.cache) == 0 and gateway.cache.nbytes == 0


def test_samples_per_request_and_characters_per_response_are_capped(prm):
    with serving([prm.base_url], max_samples=8, max_response_chars=1000) as (url, _):
        many = post(url, "/get_reward", reward_body(*[f"Step 1: s{i}" for i in range(300)]))
        assert many.status_code == 413 and "300 samples in one request exceed --max-samples 8" in many.text
        long = post(url, "/score", reward_body("Step 1: a", "Step 1: " + "z" * 1000))
        assert long.status_code == 413 and "sample 1" in long.text and "--max-response-chars 1000" in long.text
        assert prm.requests == []
        cached = post(url, "/score", {**reward_body(*[f"Step 1: s{i}" for i in range(300)]), "cache_only": True})
        assert cached.status_code == 200  # reading the cache costs no PRM call: not limited
        assert post(url, "/get_reward", reward_body("Step 1: " + "z" * 900)).status_code == 200


def test_every_failed_sample_of_a_batch_is_counted_and_named(prm):
    labels = [json.dumps({"preference": "p", "question": Q, "id": f"id{i}"}) for i in range(4)]
    responses = ["Step 1: ok", "Step 1: a [http=500]", "Step 1: b [score=none]", "Step 1: c [http=503]"]
    body = {"query": [PROMPT + r for r in responses], "prompts": [PROMPT] * 4, "labels": labels}
    with serving([prm.base_url], failure_policy="fail") as (url, _):
        failed = post(url, "/get_reward", body)
        metrics = httpx.get(url + "/metrics").text
    assert failed.status_code == 502
    detail = failed.json()["detail"]
    assert detail.startswith("3 of 4 sample(s) failed") and all(f"id {i!r}" in detail for i in ("id1", "id2", "id3"))
    assert 'cdra_prm_samples_total{outcome="failed"} 3.0' in metrics
    assert 'cdra_prm_samples_total{outcome="ok"} 1.0' in metrics
