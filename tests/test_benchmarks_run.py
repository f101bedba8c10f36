"""Every benchmark script runs end to end at a tiny size and ends with its JSON line, machine included.

Speed is never asserted here (benchmarks compare against their own baseline in one run); this only keeps the
scripts working as the code under them changes: their servers in subprocesses start, talk and stop. The rollout
benchmark takes a minute at any size, so only its simulated PRM child is started: the parent reads the child's URL
from its first line, the contract the others' full runs check.
"""

import json
import subprocess
import sys
from urllib.request import urlopen

import pytest
from fresh_checkout import ROOT

TINY = {
    "bench_advantage.py": ["--responses", "8", "--tokens", "200", "--batch", "8", "--length", "64", "--repeats", "1"],
    "bench_build.py": ["--scenarios", "2", "--latency", "0.01", "--parallel", "2", "--serial-scenarios", "1",
                       "--repeats", "1"],
    "bench_gateway_load.py": ["--requests", "20", "--concurrency", "4", "--steps", "2", "--latency", "0.01,0.02"],
    "bench_prm.py": ["--responses", "4", "--steps", "2", "--latency", "0.01", "--concurrency", "4",
                     "--serial-responses", "1", "--repeats", "1"],
}  # fmt: skip


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_and_ends_with_its_json_line(script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *TINY[script]],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, f"{script}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert "cores of" in last["machine"], last


def test_the_rollout_benchmarks_simulated_prm_answers_at_the_url_it_prints_first():
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench_rollout.py"), "--_sim", "2", "4", "1.0"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = child.stdout.readline().strip()
        with urlopen(f"{url}/r1/v1/models", timeout=30) as answer:
            assert answer.status == 200
    finally:
        child.stdin.close()  # the child serves until its stdin closes
        assert child.wait(timeout=30) == 0
