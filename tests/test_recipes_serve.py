"""recipes/serve_prm.sh: every value checked (the GPU check: test_recipes_gpu.py; a real run with the scripted
stand-in as vLLM: test_prm_cli.py)."""

import os
import subprocess
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "serve_prm.sh"


def run(**env) -> subprocess.CompletedProcess:
    full = {**os.environ, "DRY_RUN": "1", "PRM_MODEL": "org/prm", **env}
    return subprocess.run(["bash", str(RECIPE)], env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PRM_MODEL": "checkpoints/pers-genprm"}, "PRM_MODEL=checkpoints/pers-genprm: no such folder"),
        ({"PRM_TP": "0"}, "PRM_TP=0: expected a whole number >= 1"),
        ({"GPU_MEMORY_UTILIZATION": "90"}, "GPU_MEMORY_UTILIZATION=90: expected a number in (0, 1]"),
        (
            {"VLLM_BASE_PORT": "65535", "GPUS": "0,1"},
            "VLLM_BASE_PORT=65535: expected a whole number >= 1 and <= 65534",
        ),
        ({"GATEWAY_PORT": "http"}, "GATEWAY_PORT=http: expected a whole number >= 1 and <= 65535"),
        ({"FAILURE_POLICY": "score=abc"}, "FAILURE_POLICY=score=abc: expected drop, fail or score=X"),
        ({"MAX_STEPS": "0"}, "MAX_STEPS=0: expected a whole number >= 1"),
        ({"DRY_RUN": "true"}, "DRY_RUN=true: expected one of: 0 1"),
        ({"GPU_CHECK": "off"}, "GPU_CHECK=off: expected one of: 0 1"),
    ],
)
def test_every_value_is_checked(env, message):
    out = run(**env)
    assert out.returncode == 2 and out.stdout == ""
    (line,) = [line for line in out.stderr.splitlines() if "error" in line]
    assert line.startswith("serve_prm.sh: error: ") and message in line, line


def test_a_dry_run_says_it_skips_the_gpu_check():
    out = run(GPUS="0,3")
    assert out.returncode == 0 and out.stdout.startswith("CUDA_VISIBLE_DEVICES=0 ")
    assert "serve_prm.sh: DRY_RUN=1: not checking for 4 GPU(s) (GPUS=0,3)" in out.stderr
