"""What clients can do to `cdra prm serve`'s connections: the real command in a subprocess (uvicorn's h11 protocol,
the header deadline, the connection cap), raw sockets for clients that misbehave below HTTP.

A client that sends a body nobody reads (the 401 path, /health, an unknown path) is answered and cut off; headers over
64 KiB are refused; and many slow unauthorised connections cannot take the file descriptors an authorised
/get_reward needs, even under a file descriptor limit of 256.
"""

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cdra_plugin.stub import ScriptedLLM, prm_step_judge
from cdra_plugin.stub.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "gw-token-5521"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABEL = json.dumps({"preference": "I avoid crowds.", "question": "Where to go?"})
REWARD = {"query": ["PStep 1: a [score=0.4]"], "prompts": ["P"], "labels": [LABEL]}
SLOW_BODY = b'Content-Length: 100000\r\n\r\n{"query": ['  # the headers complete, a body that never does


@contextlib.contextmanager
def gateway(*argv, nofile=None):
    """``cdra prm serve --auth-token-env`` over a scripted PRM in a subprocess (file descriptor limit ``nofile``):
    yields its URL and port."""
    port = free_port()
    with ScriptedLLM(prm_step_judge()) as llm:
        cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", llm.base_url, "--model",
               "scripted-prm", "--port", str(port), "--auth-token-env", "GW_TOKEN", "--log-level", "warning",
               *argv]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GW_TOKEN": TOKEN}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=nofile and descriptor_limit(nofile))  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    httpx.get(url + "/metrics", timeout=2)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the gateway did not start within 60 s"
                    time.sleep(0.1)
            yield url, port
        finally:
            proc.terminate()
            proc.communicate(timeout=20)


def descriptor_limit(n: int):
    """For ``preexec_fn``: the child may open ``n`` file descriptors."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def exchange(port, request: bytes, wait=5.0) -> tuple[bytes, bool]:
    """Send ``request`` on a new connection: what came back, and whether the server then closed the connection."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        sock.settimeout(wait)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            return answer, False
    return answer, True


@pytest.fixture(scope="module")
def served():
    with gateway("--body-timeout", "30") as (url, port):
        yield url, port


def test_a_body_the_server_will_not_read_closes_the_connection(served):
    """401, 404 and endpoints that read no body answer at once and close the connection, however slowly the body
    comes: only /get_reward and /score read one, within --body-timeout."""
    _, port = served
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    for request, status in [
        (b"POST /get_reward HTTP/1.1\r\nHost: x\r\n" + SLOW_BODY, b"401"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + SLOW_BODY, b"401"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + auth + SLOW_BODY, b"200"),
        (b"POST /nowhere HTTP/1.1\r\nHost: x\r\n" + SLOW_BODY, b"404"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"401"),  # no body, but an unauthorised client keeps nothing
    ]:
        started = time.monotonic()
        answer, closed = exchange(port, request)
        assert answer.startswith(b"HTTP/1.1 " + status) and closed, (request, answer)
        assert time.monotonic() - started < 4, request  # not held until a deadline
    answer, closed = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n", wait=1.0)
    assert answer.startswith(b"HTTP/1.1 200") and not closed  # a complete request keeps its connection alive


def test_headers_over_64_kib_are_refused(served):
    url, _ = served
    big = httpx.post(url + "/get_reward", json=REWARD, headers={**AUTH, "X-Pad": "p" * 70_000}, timeout=10)
    fits = httpx.post(url + "/get_reward", json=REWARD, headers={**AUTH, "X-Pad": "p" * 60_000}, timeout=10)
    assert big.status_code in (400, 431) and fits.status_code == 200  # 431 when read whole, h11's 400 if in pieces
    assert big.headers["connection"] == "close"


def test_slow_unauthorised_connections_cannot_starve_authorised_requests():
    """With 256 file descriptors, hundreds of slow unauthorised clients (unfinished headers; slow bodies on the 401
    path, /health and an unknown path) stay open while an authorised /get_reward still gets its reward."""
    with gateway("--concurrency", "16", "--header-timeout", "60", nofile=256) as (url, port):
        socks = []
        try:
            for i in range(600):
                sock = socket.create_connection(("127.0.0.1", port))
                socks.append(sock)
                if i % 2:
                    sock.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\n")  # headers never finished
                else:
                    path = (b"POST /get_reward", b"GET /health", b"POST /nowhere")[i // 2 % 3]
                    sock.sendall(path + b" HTTP/1.1\r\nHost: x\r\n" + SLOW_BODY)
            time.sleep(0.5)
            for _ in range(3):
                answer = httpx.post(url + "/get_reward", json=REWARD, headers=AUTH, timeout=20)
                assert answer.status_code == 200 and answer.json()["rewards"] == [0.4], answer.text
            metrics = httpx.get(url + "/metrics", headers=AUTH, timeout=10).text
        finally:
            for sock in socks:
                sock.close()
    shed = next(line for line in metrics.splitlines() if line.startswith("cdra_prm_connections_shed_total"))
    assert float(shed.split()[-1]) > 100  # the cap (256 - 16 - 64 = 176) closed the oldest waiting connections


def test_a_cap_that_does_not_fit_the_descriptor_limit_is_one_error_line():
    cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", "http://127.0.0.1:9/v1", "--model",
           "m", "--port", str(free_port()), "--concurrency", "16", "--max-connections", "1000"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, preexec_fn=descriptor_limit(256))
    assert done.returncode == 2 and "Application startup" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "cdra prm serve: error: --max-connections 1000 does not fit the file descriptor limit 256 beside 80 for the "
        "PRM (--concurrency x backends + 64): lower it or --concurrency, or raise `ulimit -n`"
    )
