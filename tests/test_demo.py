"""`cdra demo` as a new user runs it: a subprocess, real servers on loopback, every one of them stopped at the end or
on Ctrl-C, outputs where it says."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from noise import noise

from cdra_plugin.traces import trace_problem

SERVER = re.compile(r"http://127\.0\.0\.1:(\d+)")


def demo(output, *options, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1"}
    argv = [sys.executable, "-m", "cdra_plugin.cli", "demo", "--output", str(output), *options]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_demo_runs_every_stage_and_leaves_no_server_behind(tmp_path):
    proc = demo(tmp_path / "out", "--learn-steps", "2")  # tests/test_trl_learning.py checks that it learns
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert noise(out + err) == [], noise(out + err)  # nothing from the libraries below (tests/noise.py)
    for stage in ("data", "servers", "rewards", "CDPA", "trace", "eval", "learn"):
        assert re.search(rf"^\[\d/7\] {stage} ", out, re.MULTILINE), stage
    ports = {int(p) for p in SERVER.findall(out)}
    assert len(ports) >= 4 and not any(listening(p) for p in ports)  # PRM, gateway, policy, judge: all stopped

    records = [json.loads(line) for line in (tmp_path / "out" / "traces.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(trace_problem(r) is None for r in records)
    best = records[0]
    assert best["scores"] == [0.78, 0.84, 0.88] and all(c.startswith("Reasoning:") for c in best["critiques"])
    assert best["mean_advantage"][0] > 0 > records[2]["mean_advantage"][0]  # the best response's step 1 is pushed up
    report = json.loads((tmp_path / "out" / "eval" / "report" / "report.json").read_text())
    assert set(report["runs"]) == {"zero-shot", "policy"}
    assert (tmp_path / "out" / "eval" / "report" / "radar.png").stat().st_size > 0
    curve = json.loads((tmp_path / "out" / "learning_curve.json").read_text())
    assert len(curve["scores"]) == 2 and curve["mode"] == "cdpa"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_stops_every_server_in_one_line(tmp_path, signum, code):
    proc = demo(tmp_path / "out")
    lines = []
    deadline = time.monotonic() + 120
    while not any(line.startswith("[2/7] servers") for line in lines):  # the PRM and the gateway are up
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines) + proc.stderr.read()
        lines.append(proc.stdout.readline())
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.strip().splitlines()[-1].startswith("cdra demo: interrupted") and "Traceback" not in err
    ports = {int(p) for p in SERVER.findall("".join(lines))}
    assert len(ports) == 2 and not any(listening(p) for p in ports)
