"""recipes/train_cdpa.sh and train_grpo_baseline.sh: syntax, input checks, and a command OpenRLHF's parser accepts."""

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from cdpa_host import host_args

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def run_recipe(name, tmp_path, **env):
    full = {**os.environ, "DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(RECIPES / name)], capture_output=True, text=True, env=full, cwd=tmp_path)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "rl_prompts.jsonl"
    row = {"input": [{"role": "user", "content": "q"}], "label": json.dumps({"preference": "p", "question": "q"})}
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(64)))
    return path


@pytest.mark.parametrize("name", sorted(str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.sh")))
def test_every_recipe_is_valid_bash(name):  # the one `bash -n` check per recipe (and recipes/lib)
    subprocess.run(["bash", "-n", str(RECIPES / name)], check=True)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PROMPTS": "missing.jsonl"}, "PROMPTS=missing.jsonl not found: run 'cdra data prepare"),
        ({"POLICY": "./no-such-checkpoint"}, "has no config.json"),
        ({"N_SAMPLES": "1"}, "need at least 2 responses per prompt"),
        ({"REWARD_URL": "http://127.0.0.1:5000/score"}, "must be the gateway's http://HOST:PORT/get_reward"),
    ],
)
def test_train_cdpa_checks_its_inputs(tmp_path, prompts, env, message):
    out = run_recipe(
        "train_cdpa.sh", tmp_path, **{"PROMPTS": str(prompts), "POLICY": "Qwen/Qwen2.5-7B-Instruct", **env}
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.mark.parametrize(
    "recipe, entry", [("train_cdpa.sh", "cdra_plugin.train"), ("train_grpo_baseline.sh", "openrlhf.cli.train_ppo_ray")]
)
def test_recipe_command_is_accepted_by_the_host_parser(monkeypatch, tmp_path, prompts, tiny_model_path, recipe, entry):
    out = run_recipe(recipe, tmp_path, PROMPTS=str(prompts), POLICY=str(tiny_model_path), MAX_STEPS="4")
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
    assert ("--cdpa.mode" in argv) == (entry == "cdra_plugin.train")
