"""`cdra prm serve` started as a new user would (a subprocess, secrets from env), `cdra prm score` (offline,
resumable) and recipes/serve_prm.sh (dry run, input checks, and a real run with the scripted server as vLLM).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cdra_plugin.cli import main
from cdra_plugin.testing import Fault, ScriptedLLM, prm_step_judge

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-SECRET-api-key-7731"
TOKEN = "gw-SECRET-token-9920"
LABEL = json.dumps({"preference": "I avoid crowds.", "question": "Where to go?", "id": "x1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_subprocess_works_and_never_shows_secrets():
    def judge(request):  # a backend that echoes the key in its error, as a careless proxy might
        if "[echo]" in request.prompt.rpartition("New Thought to Evaluate:")[2]:
            return Fault.http(500, message=f"upstream rejected key {API_KEY}")
        return prm_step_judge()(request)

    port = free_port()
    env = {**os.environ, "PRM_KEY": API_KEY, "GW_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    with ScriptedLLM(judge) as llm:
        cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", llm.base_url,
               "--model", "scripted-prm", "--api-key-env", "PRM_KEY", "--auth-token-env", "GW_TOKEN",
               "--port", str(port), "--log-level", "debug", "--timeout", "1", "--retries", "1",
               "--backoff", "0.01"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    health = httpx.get(url + "/health", headers=auth, timeout=2)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "gateway did not start within 60 s"
                    time.sleep(0.2)
            body = {"query": ["PStep 1: a [score=0.4]"], "prompts": ["P"], "labels": [LABEL]}
            ok = httpx.post(url + "/get_reward", json=body, headers=auth, timeout=10)
            body = {"query": ["PStep 1: a [echo]"], "prompts": ["P"], "labels": [LABEL]}
            failed = httpx.post(url + "/get_reward", json=body, headers=auth, timeout=10)
            metrics = httpx.get(url + "/metrics", headers=auth, timeout=5).text
            denied = httpx.post(url + "/get_reward", json=body, timeout=10)
        finally:
            proc.terminate()
            logs = proc.communicate(timeout=20)[0]
        sent_keys = {r.headers.get("authorization") for r in llm.all_requests}
    assert health.status_code == 200 and ok.status_code == 200 and ok.json()["rewards"] == [0.4]
    assert failed.status_code == 502 and "sample 0 (id 'x1')" in failed.json()["detail"]
    assert denied.status_code == 401
    assert sent_keys == {f"Bearer {API_KEY}"}  # the key is used ...
    assert f"--reward.remote_url http://127.0.0.1:{port}/get_reward" in logs
    for text in (logs, metrics, health.text, failed.text, ok.text):  # ... and shown nowhere
        assert API_KEY not in text and TOKEN not in text
    assert "upstream rejected key ***" in failed.text


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


RECORDS = [
    {"id": "a", "preference": "P", "question": "q", "response": "Step 1: x [score=0.2]\nStep 2: y [score=0.4]"},
    {"id": "b", "label": LABEL, "response": "just one step [score=-0.3]"},
    {"id": "c", "prompt": "PR:", "query": "PR:Step 1: z [score=0.9]<|im_end|>", "label": json.loads(LABEL)},
]


def score_cli(llm, inp, out, *extra):
    argv = ["prm", "score", "--backend", llm.base_url, "--model", "scripted-prm", "--input", str(inp),
            "--output", str(out), "--timeout", "0.5", "--retries", "1", "--backoff", "0.001", *extra]  # fmt: skip
    return main(argv)


def test_offline_scoring_is_resumable(tmp_path):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(inp, RECORDS)
    with ScriptedLLM(prm_step_judge()) as llm:
        assert score_cli(llm, inp, out) == 0
        scored = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert scored["a"]["reward"] == pytest.approx(0.3) and scored["b"]["reward"] == pytest.approx(-0.3)
        assert scored["c"]["response"] == "Step 1: z [score=0.9]<|im_end|>" and scored["c"]["num_steps"] == 1
        assert [s["text"] for s in scored["a"]["steps"]] == ["x [score=0.2]", "y [score=0.4]"]
        assert len(llm.requests) == 4
        # An interrupted run leaves a torn last line: it is removed and that record scored again.
        lines = out.read_text().splitlines(keepends=True)
        out.write_text("".join(lines[:-1]) + lines[-1][:20])
        assert score_cli(llm, inp, out) == 0
        again = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["id"] for r in again) == ["a", "b", "c"]
        assert 4 < len(llm.requests) <= 6
        n = len(llm.requests)
        assert score_cli(llm, inp, out) == 0 and len(llm.requests) == n  # nothing left to do


def test_offline_bad_input_names_the_line_and_writes_nothing(tmp_path, capsys):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(inp, [RECORDS[0], {"id": "z", "preference": "P", "question": 3, "response": "r"}])
    with ScriptedLLM() as llm:
        assert score_cli(llm, inp, out) == 2
        assert not llm.requests
    assert f"{inp}:2: field 'question' is not a string" in capsys.readouterr().err
    assert not out.exists()


def test_offline_fail_policy_stops_and_keeps_what_was_written(tmp_path, capsys):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    records = [dict(RECORDS[0], id=f"ok{i}") for i in range(3)] + [dict(RECORDS[1], response="x [http=500]")]
    write_jsonl(inp, records)
    with ScriptedLLM(prm_step_judge()) as llm:
        assert score_cli(llm, inp, out, "--failure-policy", "fail", "--parallel", "1") == 1
    assert "record 'b'" in capsys.readouterr().err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["ok0", "ok1", "ok2"]


RECIPE = ROOT / "recipes" / "serve_prm.sh"


def run_recipe(env_overrides, timeout=30):
    env = {**os.environ, **env_overrides}
    return subprocess.run(["bash", str(RECIPE)], env=env, capture_output=True, text=True, timeout=timeout)


def test_recipe_dry_run_and_input_checks(tmp_path):
    out = run_recipe({"DRY_RUN": "1", "PRM_MODEL": "org/prm", "GPUS": "0,1,2,3", "PRM_TP": "2"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("CUDA_VISIBLE_DEVICES=0,1 vllm serve org/prm") and "--port 8100" in lines[0]
    assert lines[1].startswith("CUDA_VISIBLE_DEVICES=2,3 ") and "--port 8101" in lines[1]
    assert all("--enable-prefix-caching" in line and "--tensor-parallel-size 2" in line for line in lines[:2])
    assert "--backend http://127.0.0.1:8100/v1\\,http://127.0.0.1:8101/v1" in lines[2]
    for env, message in [
        ({"PRM_MODEL": str(tmp_path)}, "has no config.json"),
        ({"GPUS": "0,x"}, "GPUS=0,x"),
        ({"GPUS": "0,1,2", "PRM_TP": "2"}, "not a multiple of PRM_TP=2"),
        ({"GATEWAY_PORT": "8100"}, "collides with the replica ports"),
        ({"FAILURE_POLICY": "ignore"}, "FAILURE_POLICY=ignore"),
        ({"AUTH_TOKEN_ENV": "CDRA_TEST_UNSET_TOKEN"}, "unset or empty"),
    ]:
        out = run_recipe({"DRY_RUN": "1", "PRM_MODEL": "org/prm", **env})
        assert out.returncode == 2 and message in out.stderr, (env, out.stderr)


def test_recipe_starts_replicas_and_gateway_and_stops_them(tmp_path):
    model = tmp_path / "prm"
    model.mkdir()
    (model / "config.json").write_text("{}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cdra_plugin.testing "$@"\n')
    (bin_dir / "cdra").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cdra_plugin.cli "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    while True:  # two consecutive free ports for the replicas
        base = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            continue
    gateway_port = free_port()
    env = {**os.environ, "PRM_MODEL": str(model), "GPUS": "0,1", "VLLM_BASE_PORT": str(base),
           "GATEWAY_PORT": str(gateway_port), "VLLM": str(bin_dir / "vllm"), "CDRA": str(bin_dir / "cdra"),
           "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs"), "HEALTH_TIMEOUT": "60",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    proc = subprocess.Popen(
        ["bash", str(RECIPE)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{gateway_port}"
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "ready. Train with:" in line:
                break
        assert f"--reward.remote_url {url}/get_reward" in "".join(seen), "".join(seen)
        body = {"query": ["PStep 1: a [score=0.25]\nStep 2: b [score=0.75]"], "prompts": ["P"], "labels": [LABEL]}
        assert httpx.post(url + "/get_reward", json=body, timeout=10).json()["rewards"] == [0.5]
        health = httpx.get(url + "/health", timeout=10).json()
        assert [b["backend"] for b in health["backends"]] == [f"http://127.0.0.1:{base + i}/v1" for i in (0, 1)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    time.sleep(0.5)
    for port in (base, base + 1, gateway_port):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
