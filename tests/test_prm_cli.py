"""`cdra prm serve` started as a new user would (a subprocess, secrets from env), `cdra prm score` (offline,
resumable) and recipes/serve_prm.sh (dry run, input checks, and a real run with the scripted server as vLLM).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cdra_plugin.cli import main
from cdra_plugin.stub import Fault, ScriptedLLM, prm_step_judge
from cdra_plugin.stub.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-SECRET-api-key-7731"
TOKEN = "gw-SECRET-token-9920"
LABEL = json.dumps({"preference": "I avoid crowds.", "question": "Where to go?", "id": "x1"})


# torch (imported by cdra_plugin.cdpa.steps today) warns about pynvml on import; not the gateway's output under test
QUIET = {"PYTHONWARNINGS": "ignore:The pynvml package is deprecated:FutureWarning"}


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
        assert scored["a"]["reward"] == pytest.approx(0.2) and scored["b"]["reward"] == pytest.approx(-0.3)  # min
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


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "relative"])
def test_offline_output_that_is_the_input_is_refused_naming_both(tmp_path, capsys, monkeypatch, link):
    inp = tmp_path / "responses.jsonl"
    write_jsonl(inp, RECORDS)
    before = inp.read_bytes()
    out = {"same": inp, "symlink": tmp_path / "scored.jsonl", "hardlink": tmp_path / "scored.jsonl",
           "relative": Path("sub/../responses.jsonl")}[link]  # fmt: skip
    if link == "symlink":
        out.symlink_to(inp)
    elif link == "hardlink":
        os.link(inp, out)
    elif link == "relative":
        monkeypatch.chdir(tmp_path)
        (tmp_path / "sub").mkdir()
    with ScriptedLLM(prm_step_judge()) as llm:
        assert score_cli(llm, inp, out) == 2
        assert not llm.requests
    err = capsys.readouterr().err
    assert f"--output {out} is the --input file {inp}" in err and "choose another --output" in err
    assert inp.read_bytes() == before


def test_offline_fail_policy_stops_and_keeps_what_was_written(tmp_path, capsys):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    records = [dict(RECORDS[0], id=f"ok{i}") for i in range(3)] + [dict(RECORDS[1], response="x [http=500]")]
    write_jsonl(inp, records)
    with ScriptedLLM(prm_step_judge()) as llm:
        assert score_cli(llm, inp, out, "--failure-policy", "fail", "--parallel", "1") == 1
    assert "record 'b'" in capsys.readouterr().err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["ok0", "ok1", "ok2"]


def test_offline_resume_after_a_last_line_without_newline_does_not_glue_records(tmp_path):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(inp, RECORDS[:2])
    with ScriptedLLM(prm_step_judge()) as llm:
        assert score_cli(llm, inp, out) == 0
        out.write_text(out.read_text().rstrip("\n"))  # complete, but its newline never made it to disk
        write_jsonl(inp, RECORDS)
        assert score_cli(llm, inp, out) == 0
        assert score_cli(llm, inp, out) == 0  # and every later run still reads the file
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ["a", "b", "c"]


def test_offline_retry_failed_rescores_dropped_and_fallback_records(tmp_path, capsys):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(inp, [dict(RECORDS[0], id=f"r{i}", response=f"Step 1: x{i} [score=0.1]") for i in range(3)])
    with ScriptedLLM(prm_step_judge()) as llm:
        llm.enqueue(*[Fault.http(500)] * 2)  # an outage: the first record's step fails after its retry
        assert score_cli(llm, inp, out, "--failure-policy", "score=0", "--parallel", "1") == 0
        first = {r["id"]: r["outcome"] for r in map(json.loads, out.read_text().splitlines())}
        assert sorted(first.values()) == ["fallback", "ok", "ok"]
        assert score_cli(llm, inp, out, "--failure-policy", "score=0") == 0 and len(llm.requests) == 4
        assert score_cli(llm, inp, out, "--failure-policy", "score=0", "--retry-failed") == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["r0", "r1", "r2"] and {r["outcome"] for r in records} == {"ok"}
    assert "1 of 1 record(s) scored and saved (1 ok), 2 already in" in capsys.readouterr().out


def test_offline_summary_is_one_readable_line_and_no_progress_hides_the_bar(tmp_path, capsys):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(inp, RECORDS)
    with ScriptedLLM(prm_step_judge()) as llm:
        assert score_cli(llm, inp, out, "--no-progress") == 0
    captured = capsys.readouterr()
    assert captured.out == f"cdra prm score: 3 of 3 record(s) scored and saved (3 ok), 0 already in {out}\n"
    assert "PRM scoring" not in captured.err


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_offline_ctrl_c_or_sigterm_stops_in_one_line_with_what_was_saved(tmp_path, signum, status):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(inp, [dict(RECORDS[0], id=f"r{i}", response=f"Step 1: x{i}") for i in range(200)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), **QUIET}
    with ScriptedLLM(prm_step_judge(), latency=0.2, max_concurrency=8) as llm:
        cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "score", "--backend", llm.base_url, "--model",
               "scripted-prm", "--input", str(inp), "--output", str(out), "--no-progress"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().count("\n") >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    saved = out.read_text().splitlines()
    assert proc.returncode == status and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines() == [
        f"cdra prm score: interrupted ({signal.Signals(signum).name}); {len(saved)} of 200 record(s) scored and "
        f"saved ({len(saved)} ok), 0 already in {out}; run the same command again to resume"
    ]
    assert all(json.loads(line)["outcome"] == "ok" for line in saved)


def test_max_critique_tokens_replaces_max_tokens(tmp_path, capsys):
    inp, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(inp, RECORDS[:1])
    with ScriptedLLM(prm_step_judge()) as llm:
        assert score_cli(llm, inp, out, "--max-critique-tokens", "77") == 0
        assert {r.body["max_tokens"] for r in llm.requests} == {77}
    with pytest.raises(SystemExit):
        main(["prm", "serve", "--backend", "http://127.0.0.1:9/v1", "--model", "m", "--max-tokens", "5"])
    assert "unrecognized arguments: --max-tokens" in capsys.readouterr().err
    assert "--max-tokens" not in subprocess.run([sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--help"],
                                                env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                                                text=True).stdout  # fmt: skip


def start_gateway(argv, env=None):
    """``cdra prm serve`` as a subprocess on a free port: (process, url); the caller terminates it."""
    port = free_port()
    cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--port", str(port), *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            httpx.get(url + "/metrics", timeout=2)
            return proc, url
        except httpx.TransportError:
            assert time.monotonic() < deadline, "gateway did not start within 60 s"
            time.sleep(0.1)


def test_gateway_warns_of_a_dead_backend_at_startup_and_cuts_off_slow_clients():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with ScriptedLLM(prm_step_judge()) as llm:
        proc, url = start_gateway(["--backend", f"{llm.base_url},{dead}", "--model", "scripted-prm",
                                   "--header-timeout", "0.5", "--body-timeout", "0.5"])  # fmt: skip
        port = int(url.rsplit(":", 1)[1])
        socks = []
        try:
            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
            slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
            socks += idle + slow
            for sock in slow:
                sock.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            trickle = socket.create_connection(("127.0.0.1", port))
            body = socket.create_connection(("127.0.0.1", port))
            socks += [trickle, body]
            body.sendall(b'POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"query"')
            for byte in b"POST /get_reward":  # a byte at a time: a deadline, not an idle timeout
                try:
                    trickle.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.06)
            time.sleep(0.6)
            for sock in [*idle, *slow, trickle]:
                sock.settimeout(5)
                assert sock.recv(1024) == b""  # closed by the gateway
            body.settimeout(5)
            answer = body.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer
            assert body.recv(1024) == b""
            reward = {"query": ["PStep 1: a [score=0.4]"], "prompts": ["P"], "labels": [LABEL]}
            assert httpx.post(url + "/get_reward", json=reward, timeout=10).json()["rewards"] == [0.4]  # serving
        finally:
            proc.terminate()
            logs = proc.communicate(timeout=20)[0]
            for sock in socks:
                sock.close()
    warning = next(line for line in logs.splitlines() if "not usable now" in line)
    assert "WARNING" in warning and dead in warning and "serving anyway" in warning
    assert logs.index(warning) < logs.index("Application startup complete")


def test_a_port_in_use_is_one_line_before_anything_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", "http://127.0.0.1:9/v1",
               "--model", "m", "--port", str(port)]  # fmt: skip
        done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), **QUIET}, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Application startup complete" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"cdra prm serve: error: cannot listen on 127.0.0.1:{port} (Address already in use); pick another "
        "--port/--host"
    ]


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
    (bin_dir / "vllm").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cdra_plugin.stub "$@"\n')
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
           "PYTHONPATH": str(ROOT), "GPU_CHECK": "0"}  # fmt: skip
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
        assert httpx.post(url + "/get_reward", json=body, timeout=10).json()["rewards"] == [0.25]  # the lower
        health = httpx.get(url + "/health", timeout=10).json()
        assert [b["backend"] for b in health["backends"]] == [f"http://127.0.0.1:{base + i}/v1" for i in (0, 1)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    time.sleep(0.5)
    for port in (base, base + 1, gateway_port):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
