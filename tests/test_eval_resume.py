"""Resume after an interrupt: `cdra eval generate` stopped by Ctrl-C and `cdra eval judge` killed mid-run (a
subprocess each, against a slow scripted server), then rerun: nothing lost, nothing twice, no question re-asked."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cdra_plugin.cli import main
from cdra_plugin.stub import ScriptedLLM
from cdra_plugin.stub.judge import scripted_judge, scripted_policy

ROOT = Path(__file__).resolve().parent.parent
ITEMS = 24


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "cdra_plugin.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_rows(proc: subprocess.Popen, path: Path, rows: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(lines(path)) < rows:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)


def write_data(path: Path) -> None:
    with path.open("w") as f:
        for i in range(ITEMS):
            f.write(json.dumps({"id": f"q{i}", "topic": f"t{i % 3}", "preference": f"I avoid noise number {i}.",
                                "question": f"Where should I go on trip {i}?"}) + "\n")  # fmt: skip


def test_generate_interrupted_by_ctrl_c_resumes(tmp_path):
    data, out = tmp_path / "eval.jsonl", tmp_path / "responses.jsonl"
    write_data(data)
    argv = ["eval", "generate", "--data", str(data), "--model", "policy", "--output", str(out), "--n", "2",
            "--temperature", "1", "--concurrency", "2"]  # fmt: skip
    with ScriptedLLM(scripted_policy(), model="policy", latency=0.1, max_concurrency=2) as llm:
        proc = start([*argv, "--backend", llm.base_url])
        wait_for_rows(proc, out, 6)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "interrupted" in err and "rerun the same command to resume" in err
        before = lines(out)
        assert 6 <= len(before) < 2 * ITEMS and all(line.startswith("{") for line in before)
        assert main([*argv, "--backend", llm.base_url]) == 0
    after = lines(out)
    assert after[: len(before)] == before  # what was written stays, untouched
    keys = [(r["id"], r["sample"]) for r in map(json.loads, after)]
    assert len(keys) == len(set(keys)) == 2 * ITEMS  # nothing twice, nothing missing


def test_judge_killed_mid_run_resumes_from_its_output_and_cache(tmp_path):
    data, responses, out = tmp_path / "eval.jsonl", tmp_path / "responses.jsonl", tmp_path / "judged.jsonl"
    write_data(data)
    with ScriptedLLM(scripted_policy(), model="policy") as policy:
        assert main(["eval", "generate", "--data", str(data), "--backend", policy.base_url, "--model", "policy",
                     "--output", str(responses), "--limit", "10"]) == 0  # fmt: skip
    argv = ["eval", "judge", "--responses", str(responses), "--judge-model", "judge", "--output", str(out),
            "--concurrency", "1"]  # fmt: skip
    with ScriptedLLM(scripted_judge(), model="judge", latency=0.01) as llm:
        proc = start([*argv, "--judge", llm.base_url])
        wait_for_rows(proc, out, 2)
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait(timeout=10)
        before = lines(out)
        # a write cut short leaves a torn line: the rerun must remove it and judge that response again
        with out.open("a") as f:
            f.write('{"id": "q7", "topic": "t1", "mo')  # q7: not judged yet (2 or 3 rows are)
        asked_before = [r.prompt for r in llm.requests]
        assert main([*argv, "--judge", llm.base_url]) == 0
        asked_after = [r.prompt for r in llm.requests[len(asked_before) :]]
    after = lines(out)
    assert after[: len(before)] == before
    keys = [(r["id"], r["sample"]) for r in map(json.loads, after)]
    assert len(keys) == len(set(keys)) == 10
    assert all(v is not None for r in map(json.loads, after) for c, v in r["verdicts"].items() if c != "hallucination")
    # every answer received before the kill was cached and fsync'ed: at most the one call in flight is asked again
    assert len(set(asked_before) & set(asked_after)) <= 1
    assert len(asked_after) < len(set(asked_before) | set(asked_after))
