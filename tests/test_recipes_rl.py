"""recipes/train_cdpa.sh and train_grpo_baseline.sh: syntax, every value checked, the gateway's /health (a real
gateway over the scripted PRM), the GPUs, and a command OpenRLHF's parser accepts."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cdpa_host import host_args
from recipe_helpers import gateway, write_prompts

from cdra_plugin.stub.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SAMPLE = ROOT / "cdra_plugin" / "demo" / "samples"


def run_recipe(name, tmp_path, **env):
    # A port nothing listens on unless a test serves a gateway there (never a real one on this machine's 5000). The
    # recipe's python3 is this interpreter, as in an activated environment (it asks cdra_plugin for CDPA_MODE's).
    nobody = f"http://127.0.0.1:{free_port()}/get_reward"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    full = {**os.environ, "PATH": path, "DRY_RUN": "1", "REWARD_URL": nobody, **env}
    return subprocess.run(["bash", str(RECIPES / name)], capture_output=True, text=True, env=full, cwd=tmp_path)


@pytest.fixture
def prompts(tmp_path):
    return write_prompts(tmp_path / "rl_prompts.jsonl", json.dumps({"preference": "p", "question": "q"}), question="q")


@pytest.mark.parametrize("name", sorted(str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.sh")))
def test_every_recipe_is_valid_bash(name):  # the one `bash -n` check per recipe (and recipes/lib)
    subprocess.run(["bash", "-n", str(RECIPES / name)], check=True)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PROMPTS": "missing.jsonl"}, "PROMPTS=missing.jsonl not found: set PROMPTS to an existing rl_prompts.jsonl"),
        ({"POLICY": "./no-such-checkpoint"}, "POLICY=./no-such-checkpoint: no such folder"),
        ({"POLICY": "checkpoints/policy-rft"}, "POLICY=checkpoints/policy-rft: no such folder"),  # never a hub id
        ({"N_SAMPLES": "1"}, "N_SAMPLES=1: group estimators need at least 2 responses per prompt"),
        ({"N_SAMPLES": "abc"}, "N_SAMPLES=abc: expected a whole number >= 1"),
        ({"REWARD_URL": "http://127.0.0.1:5000/score"}, "must be the gateway's http://HOST:PORT/get_reward"),
        ({"CDPA_MODE": "tokenposition"}, "CDPA_MODE=tokenposition: expected one of: token_position group_steps"),
        ({"CDPA_FAILURE_POLICY": "skip"}, "CDPA_FAILURE_POLICY=skip: expected one of: drop fail"),
        ({"ESTIMATOR": "gae"}, "ESTIMATOR=gae: expected one of: cdpa group_norm"),
        ({"LR": "abc"}, "LR=abc: expected a number > 0"),
        ({"KL_COEF": "-1"}, "KL_COEF=-1: expected a number >= 0"),
        ({"TEMPERATURE": "hot"}, "TEMPERATURE=hot: expected a number >= 0"),
        ({"TRACE_SAMPLE_RATE": "2"}, "TRACE_SAMPLE_RATE=2: expected a number in (0, 1]"),
        ({"MAX_STEPS": "0"}, "MAX_STEPS=0: expected a whole number >= 1"),
        ({"ROLLOUT_BATCH_SIZE": "x"}, "ROLLOUT_BATCH_SIZE=x: expected a whole number >= 1"),
        ({"GENERATE_MAX_LEN": "1k"}, "GENERATE_MAX_LEN=1k: expected a whole number >= 1"),
        ({"VLLM_TP": "3"}, "VLLM_TP=3 does not divide the NNODES x GPUS_PER_NODE = 8 GPUs"),
        ({"NNODES": "two"}, "NNODES=two: expected a whole number >= 1"),
        ({"RAY_ADDRESS": "head:8265"}, "RAY_ADDRESS=head:8265: expected the Ray dashboard's http://HOST:PORT"),
        ({"SAVE_STEPS": "often"}, "SAVE_STEPS=often: expected a whole number >= -1"),
        ({"AUTH_TOKEN_ENV": "CDRA_TEST_UNSET_TOKEN"}, "AUTH_TOKEN_ENV=CDRA_TEST_UNSET_TOKEN names an unset or empty"),
        ({"SKIP_HEALTH_CHECK": "yes"}, "SKIP_HEALTH_CHECK=yes: expected one of: 0 1"),
        ({"EVAL_PROMPTS": "eval.jsonl"}, "EVAL_PROMPTS=eval.jsonl not found"),
        ({"REWARD_AGGREGATION": "total"}, "REWARD_AGGREGATION=total: expected one of: min mean weighted_mean sum"),
        ({"STREAM_SCORING": "yes"}, "STREAM_SCORING=yes: expected one of: 0 1"),
    ],
)
def test_train_cdpa_checks_every_value(tmp_path, prompts, env, message):
    out = run_recipe(
        "train_cdpa.sh", tmp_path, **{"PROMPTS": str(prompts), "POLICY": "Qwen/Qwen2.5-7B-Instruct", **env}
    )
    assert out.returncode == 2 and out.stdout == "", out.stderr
    (line,) = [line for line in out.stderr.splitlines() if "error" in line]
    assert line.startswith("train_cdpa.sh: error: ") and message in line, line


def test_the_sample_data_names_the_variable_to_lower(tmp_path):
    assert main_prepare(tmp_path / "sample") == 0
    out = run_recipe("train_cdpa.sh", tmp_path, PROMPTS="sample/rl_prompts.jsonl", POLICY="Qwen/Qwen2.5-7B-Instruct")
    assert out.returncode == 2
    assert "has 6 prompt(s), fewer than ROLLOUT_BATCH_SIZE=32: set ROLLOUT_BATCH_SIZE=6 or lower" in out.stderr
    out = run_recipe(
        "train_cdpa.sh", tmp_path, PROMPTS="sample/rl_prompts.jsonl", POLICY="Qwen/Qwen2.5-7B-Instruct",
        ROLLOUT_BATCH_SIZE="6",
    )  # fmt: skip
    assert out.returncode == 0 and "6 prompts, 400 episode(s) of 1 steps" in out.stderr


def main_prepare(output: Path) -> int:
    from cdra_plugin.cli import main

    return main(
        ["data", "prepare", "--input", str(SAMPLE), "--output", str(output), "--eval-size", "2", "--no-progress"]
    )


def test_a_dry_run_checks_the_gateway_and_warns_when_none_answers(tmp_path, prompts):
    env = {"PROMPTS": str(prompts), "POLICY": "Qwen/Qwen2.5-7B-Instruct"}
    out = run_recipe("train_cdpa.sh", tmp_path, **env)
    assert out.returncode == 0 and out.stdout.startswith("ray job submit ")
    assert "warning: no PRM gateway answers at http://127.0.0.1:" in out.stderr and "DRY_RUN=1 goes on" in out.stderr
    with gateway(failure_policy="drop") as url:
        out = run_recipe("train_cdpa.sh", tmp_path, REWARD_URL=url, **env)
        assert out.returncode == 0, out.stderr
        assert f"PRM gateway at {url}: ok, model pers-genprm, failure policy drop" in out.stderr
        # The GRPO baseline cannot honour `drop`: refused in a dry run too.
        out = run_recipe("train_grpo_baseline.sh", tmp_path, REWARD_URL=url, **env)
        assert out.returncode == 2 and "runs --failure-policy drop, which only cdra-train honours" in out.stderr
    with gateway(backend=f"http://127.0.0.1:{free_port()}/v1") as url:  # its PRM is down
        out = run_recipe("train_cdpa.sh", tmp_path, REWARD_URL=url, **env)
        assert out.returncode == 2 and f"the PRM gateway at {url} is not usable: status down" in out.stderr
    out = run_recipe("train_cdpa.sh", tmp_path, SKIP_HEALTH_CHECK="1", **env)
    assert out.returncode == 0 and "SKIP_HEALTH_CHECK=1: the PRM gateway at" in out.stderr


def test_the_grpo_baseline_needs_the_papers_summed_reward_unless_told_otherwise(tmp_path, prompts):
    env = {"PROMPTS": str(prompts), "POLICY": "Qwen/Qwen2.5-7B-Instruct"}
    with gateway() as url:  # the gateway's default aggregation, min
        out = run_recipe("train_grpo_baseline.sh", tmp_path, REWARD_URL=url, **env)
        assert out.returncode == 2 and out.stdout == ""
        (line,) = out.stderr.splitlines()[-1:]
        assert line == (
            f"train_grpo_baseline.sh: error: the PRM gateway at {url} is not usable: its reward aggregation is "
            "min, not REWARD_AGGREGATION=sum (R_dense = the sum of the step scores, the paper's GRPO (with "
            "PRM) reward): restart it with REWARD_AGGREGATION=sum bash recipes/serve_prm.sh, or set "
            "REWARD_AGGREGATION=min to train on its reward"
        )
        # The explicit opt-out: GRPO on the gateway's default reward (min), knowingly not the paper's row.
        out = run_recipe("train_grpo_baseline.sh", tmp_path, REWARD_URL=url, REWARD_AGGREGATION="min", **env)
        assert out.returncode == 0 and "reward aggregation min" in out.stderr, out.stderr
        out = run_recipe("train_cdpa.sh", tmp_path, REWARD_URL=url, **env)  # CDPA reads the step scores: any
        assert out.returncode == 0, out.stderr
    with gateway(reward_aggregation="sum") as url:
        out = run_recipe("train_grpo_baseline.sh", tmp_path, REWARD_URL=url, **env)
        assert out.returncode == 0, out.stderr
        ok = f"PRM gateway at {url}: ok, model pers-genprm, failure policy fail, reward aggregation sum"
        assert ok in out.stderr


def test_a_dry_run_says_what_it_did_not_check(tmp_path, prompts):
    out = run_recipe("train_cdpa.sh", tmp_path, PROMPTS=str(prompts), POLICY="Qwen/Qwen2.5-7B-Instruct")
    assert "POLICY=Qwen/Qwen2.5-7B-Instruct is no local folder: taken for a Hugging Face hub id" in out.stderr
    assert "DRY_RUN=1: every value and input checked, and the gateway (above); ray, the Ray cluster and the GPUs " \
        "are not" in out.stderr  # fmt: skip


@pytest.mark.parametrize(
    "recipe, stream, entry",
    [
        ("train_cdpa.sh", "1", "cdra_plugin.train"),
        ("train_cdpa.sh", "0", "cdra_plugin.train"),
        ("train_grpo_baseline.sh", "1", "cdra_plugin.train"),  # cdra-train streams for the host's group_norm too
        ("train_grpo_baseline.sh", "0", "openrlhf.cli.train_ppo_ray"),
    ],
)
def test_recipe_command_is_accepted_by_the_host_parser(
    monkeypatch, tmp_path, prompts, tiny_model_path, recipe, stream, entry
):
    env = {"PROMPTS": str(prompts), "POLICY": str(tiny_model_path), "MAX_STEPS": "4", "STREAM_SCORING": stream}
    if recipe == "train_cdpa.sh":
        env["CDPA_MODE"] = "min_form"
    out = run_recipe(recipe, tmp_path, **env)
    assert out.returncode == 0, out.stderr
    command = shlex.split(out.stdout.strip().splitlines()[-1])
    assert command[:3] == ["ray", "job", "submit"] and command[command.index("--") + 1 : command.index("--") + 4] == [
        "python3",
        "-m",
        entry,
    ]
    argv = command[command.index(entry) + 1 :]
    args = host_args(monkeypatch, argv)
    assert args.rollout.n_samples_per_prompt == 5 and args.rollout.temperature == 1.0
    assert args.train.num_episodes * args.data.max_samples // args.rollout.batch_size >= 4
    assert args.algo.advantage.estimator == "group_norm"  # what the host parser sees (cdpa is restored at launch)
    assert ("--cdpa.mode" in argv) == (recipe == "train_cdpa.sh")
    assert "--cdpa.mode min_form" in " ".join(argv) or recipe != "train_cdpa.sh"
    assert ("--cdpa.stream_scoring" in argv) == (stream == "1") == (args.train.agent_func_path is not None)
