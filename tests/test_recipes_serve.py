"""recipes/serve_prm.sh: every value checked (the GPU check: test_recipes_gpu.py; a real run with the scripted
stand-in as vLLM: test_prm_cli.py)."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cdra_plugin.cdpa.aggregation import AGGREGATIONS, DEFAULT_AGGREGATION
from cdra_plugin.cli import build_parser

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "serve_prm.sh"


def run(**env) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # as in an activated environment
    full = {**os.environ, "PATH": path, "DRY_RUN": "1", "PRM_MODEL": "org/prm", **env}
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
        ({"REWARD_AGGREGATION": "sums"}, "REWARD_AGGREGATION=sums: expected one of: " + " ".join(AGGREGATIONS)),
        ({"REWARD_AGGREGATION": "length_mean"}, "REWARD_AGGREGATION=length_mean: expected one of: min mean"),
        ({"LOG_DIR": "/dev/null"}, "LOG_DIR=/dev/null exists and is not a folder"),
        ({"GATEWAY_HOST": "0.0.0.0:5000"}, "GATEWAY_HOST=0.0.0.0:5000: expected a host name or IPv4 address"),
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


def gateway_args(out: subprocess.CompletedProcess):
    """The dry run's gateway command (its last line), parsed by cdra's own parser."""
    assert out.returncode == 0, out.stderr
    command = shlex.split(out.stdout.splitlines()[-1])
    assert command[:3] == ["cdra", "prm", "serve"]
    return build_parser().parse_args(command[1:])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_reward_aggregation_reaches_the_gateway(aggregation):
    assert gateway_args(run(REWARD_AGGREGATION=aggregation)).reward_aggregation == aggregation


def test_an_empty_reward_aggregation_leaves_the_gateway_default_and_help_lists_the_choices(capsys):
    out = run()
    assert "--reward-aggregation" not in out.stdout
    assert gateway_args(out).reward_aggregation == DEFAULT_AGGREGATION
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prm", "serve", "--help"])
    assert f"--reward-aggregation {{{','.join(AGGREGATIONS)}}}" in capsys.readouterr().out
