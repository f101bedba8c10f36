"""recipes/eval.sh: input checks, the dry run's commands for train_cdpa.sh's checkpoint folder, and a real run with
the scripted server standing in for `vllm serve` and a scripted judge: every checkpoint reported, the best named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdra_plugin.eval.baselines import MODES
from cdra_plugin.eval.metrics import METRICS
from cdra_plugin.eval.prompts import CHECKS
from cdra_plugin.stub import ScriptedLLM
from cdra_plugin.stub.judge import scripted_judge
from cdra_plugin.stub.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "eval.sh"


def run_recipe(tmp_path, timeout=120, **env):
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # as in an activated environment
    full = {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", str(RECIPE)], env=full, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)  # fmt: skip


@pytest.fixture
def setup(tmp_path):
    """train_cdpa.sh's SAVE_PATH (two --ckpt.save_hf checkpoints and the final model) and an eval file."""
    save = tmp_path / "policy-cdpa"
    for folder in (save, save / "ckpt" / "global_step10_hf", save / "ckpt" / "global_step5_hf"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (save / "ckpt" / "_actor").mkdir()  # DeepSpeed states: not a checkpoint to serve
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"id": f"T/{i}", "topic": f"T{i % 2}", "preference": f"I avoid noise {i}.",
                                        "question": f"Where to go {i}?"}) + "\n" for i in range(4)))  # fmt: skip
    env = {"CHECKPOINT": str(save), "DATA": str(data), "JUDGE_URL": "http://127.0.0.1:9/v1", "JUDGE_MODEL": "judge",
           "OUT_DIR": str(tmp_path / "out")}  # fmt: skip
    return save, env


def test_dry_run_lists_checkpoints_in_step_order(tmp_path, setup):
    save, env = setup
    out = run_recipe(tmp_path, DRY_RUN="1", **env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 * 3 + 1
    serve = [line for line in lines if " serve " in line]
    assert [line.split(" serve ")[1].split()[0] for line in serve] == [
        str(save / "ckpt" / "global_step5_hf"), str(save / "ckpt" / "global_step10_hf"), str(save)]  # fmt: skip
    assert all(line.startswith("CUDA_VISIBLE_DEVICES=0 vllm serve ") for line in serve)
    assert "--served-model-name global_step5 " in serve[0] and "--served-model-name final " in serve[2]
    assert lines[1].startswith("cdra eval generate ") and "--model global_step5 " in lines[1]
    assert (
        lines[2].startswith("cdra eval judge ") and f"--output {tmp_path}/out/global_step5/judgments.jsonl" in lines[2]
    )
    assert lines[-1].startswith("cdra eval report --runs global_step5=") and "--select-by acc_da" in lines[-1]
    assert "--retry-failed" in lines[2] and "--allow-mixed" not in lines[-1]  # a rerun asks the null verdicts again
    prompts = tmp_path / "prefeval_prompts"
    prompts.mkdir()
    mixed = run_recipe(tmp_path, DRY_RUN="1", **{**env, "PROMPT_DIR": str(prompts), "ALLOW_MIXED": "1"})
    assert mixed.returncode == 0 and f"--prompt-dir {prompts}" in mixed.stdout.splitlines()[2]
    assert mixed.stdout.splitlines()[-1].rstrip().endswith("--allow-mixed")
    hub = run_recipe(tmp_path, DRY_RUN="1", **{**env, "CHECKPOINT": "Qwen/Qwen2.5-7B-Instruct", "MODE": "cot"})
    assert (
        hub.returncode == 0 and "serve Qwen/Qwen2.5-7B-Instruct --served-model-name Qwen2.5-7B-Instruct" in hub.stdout
    )
    assert "--mode cot" in hub.stdout


@pytest.mark.parametrize(
    "change, message",
    [
        ({"CHECKPOINT": ""}, "CHECKPOINT is empty"),
        ({"CHECKPOINT": "checkpoints/none"}, "CHECKPOINT=checkpoints/none: no such folder"),  # never a hub id
        ({"CHECKPOINT": "org/model name"}, "CHECKPOINT=org/model name is neither a local folder nor a hub id"),
        ({"DATA": "missing.jsonl"}, "DATA=missing.jsonl not found: set DATA to an existing eval.jsonl ('cdra data"),
        ({"OUT_DIR": "/dev/null"}, "OUT_DIR=/dev/null exists and is not a folder"),
        ({"JUDGE_URL": ""}, "JUDGE_URL: at least one base URL is needed"),
        ({"JUDGE_URL": "api.deepseek.com"}, "JUDGE_URL 'api.deepseek.com': expected an http(s) base URL"),
        ({"JUDGE_MODEL": ""}, "JUDGE_MODEL is empty"),
        ({"JUDGE_API_KEY_ENV": "CDRA_TEST_UNSET_KEY"}, "the environment variable CDRA_TEST_UNSET_KEY is not set"),
        ({"SELECT_BY": "accuracy"}, "SELECT_BY=accuracy: expected one of: acc_pf"),
        ({"MODE": "fewshot"}, "MODE=fewshot: expected one of: policy zero-shot few-shot cot"),
        ({"MODE": "few-shot"}, "MODE=few-shot needs SHOTS="),
        ({"MODE": "few-shot", "SHOTS": "shots.jsonl"}, "SHOTS=shots.jsonl not found"),
        ({"MODE": "few-shot", "SHOTS": "{data}", "K": "0"}, "K=0: expected a whole number >= 1"),
        ({"SHOTS": "{data}"}, "SHOTS is set but MODE=policy"),
        ({"N_SAMPLES": "4"}, "N_SAMPLES=4 with TEMPERATURE=0 samples identical responses"),
        ({"N_SAMPLES": "0"}, "N_SAMPLES=0: expected a whole number >= 1"),
        ({"TEMPERATURE": "hot"}, "TEMPERATURE=hot: expected a number"),
        ({"MAX_TOKENS": "2k"}, "MAX_TOKENS=2k: expected a whole number"),
        ({"LIMIT": "0"}, "LIMIT=0: expected a whole number >= 1"),
        ({"SEED": "-1"}, "SEED=-1: expected a whole number >= 0"),
        ({"GEN_CONCURRENCY": "many"}, "GEN_CONCURRENCY=many: expected a whole number"),
        ({"JUDGE_CONCURRENCY": "0"}, "JUDGE_CONCURRENCY must be >= 1, got 0"),
        ({"CHECKS": "helpful,,misleading"}, "CHECKS=helpful,,misleading: expected a comma-separated list of: "),
        ({"PROMPT_DIR": "prompts"}, "PROMPT_DIR=prompts is not a folder"),
        ({"JUDGE_INPUT": "last"}, "JUDGE_INPUT=last: expected one of: full final"),
        ({"ALLOW_MIXED": "yes"}, "ALLOW_MIXED=yes: expected one of: 0 1"),
        ({"BASELINES": "sft"}, "BASELINES: 'sft' is not NAME="),
        ({"GPUS": "0;1"}, "GPUS=0;1: expected comma-separated GPU ids"),
        ({"VLLM_PORT": "70000"}, "VLLM_PORT=70000: expected a whole number >= 1 and <= 65535"),
        ({"GPU_MEMORY_UTILIZATION": "90"}, "GPU_MEMORY_UTILIZATION=90: expected a number in (0, 1]"),
        ({"MAX_MODEL_LEN": "8k"}, "MAX_MODEL_LEN=8k: expected a whole number >= 1"),
        ({"HEALTH_TIMEOUT": "0"}, "HEALTH_TIMEOUT=0: expected a whole number >= 1"),
        ({"VLLM_HOST": "http://127.0.0.1"}, "VLLM_HOST=http://127.0.0.1: expected a host name or IPv4 address"),
        ({"DRY_RUN": "yes"}, "DRY_RUN=yes: expected one of: 0 1"),
        ({"GPU_CHECK": "off"}, "GPU_CHECK=off: expected one of: 0 1"),
    ],
)
def test_every_value_is_checked_first(tmp_path, setup, change, message):
    _, env = setup
    change = {k: v.format(data=env["DATA"]) for k, v in change.items()}
    out = run_recipe(tmp_path, **{**env, "DRY_RUN": "1", **change})
    assert out.returncode == 2 and out.stdout == "", out.stderr
    (line,) = [line for line in out.stderr.splitlines() if "error" in line]
    assert line.startswith("eval.sh: error: ") and message in line, line


@pytest.mark.parametrize(
    "name, choices", [("MODE", MODES), ("SELECT_BY", METRICS), ("CHECKS", CHECKS)], ids=["MODE", "SELECT_BY", "CHECKS"]
)
def test_the_recipes_choices_are_the_cli_choices(tmp_path, setup, name, choices):
    _, env = setup
    extra = {"few-shot": {"SHOTS": env["DATA"]}}
    for choice in choices:
        out = run_recipe(tmp_path, **{**env, "DRY_RUN": "1", name: choice, **extra.get(choice, {})})
        assert out.returncode == 0, out.stderr
    out = run_recipe(tmp_path, **{**env, "DRY_RUN": "1", name: "bogus"})
    assert out.returncode == 2 and out.stderr.rstrip().endswith(" ".join(choices)), out.stderr


def test_a_dry_run_says_what_it_did_not_check(tmp_path, setup):
    _, env = setup
    out = run_recipe(tmp_path, **{**env, "DRY_RUN": "1", "GPUS": "0,2"})
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stderr.splitlines() if not line.startswith("  ")]  # settings: "  NAME=value"
    assert notes == [
        "eval.sh: DRY_RUN=1: not checking for 3 GPU(s) (GPUS=0,2)",
        "eval.sh: settings:",
        "eval.sh: DRY_RUN=1: every value and input checked; vllm, cdra, the port and the GPUs are not. The commands:",
    ]
    assert "  GPUS=0,2" in out.stderr.splitlines()


def test_checkpoint_folder_without_checkpoints_is_refused(tmp_path, setup):
    _, env = setup
    (tmp_path / "empty").mkdir()
    out = run_recipe(tmp_path, DRY_RUN="1", **{**env, "CHECKPOINT": str(tmp_path / "empty")})
    assert out.returncode == 2
    assert f"CHECKPOINT={tmp_path / 'empty'} has no config.json: point it at a checkpoint folder" in out.stderr
    assert "or the SAVE_PATH of recipes/train_cdpa.sh (with ckpt/*_hf checkpoints)" in out.stderr


def test_recipe_serves_generates_judges_reports_and_names_the_best(tmp_path, setup):
    save, env = setup
    for step in ("global_step10_hf",):  # two checkpoints keep the test short: global_step5 and the final model
        for f in (save / "ckpt" / step).iterdir():
            f.unlink()
        (save / "ckpt" / step).rmdir()
    with ScriptedLLM(scripted_judge(), model="judge") as judge:
        stand_ins = {"VLLM": f"{sys.executable} -m cdra_plugin.stub", "VLLM_EXTRA_ARGS": "--role policy",
                     "CDRA": f"{sys.executable} -m cdra_plugin.cli", "PYTHON": sys.executable,
                     "GPU_CHECK": "0"}  # fmt: skip
        settings = {"JUDGE_URL": judge.base_url, "VLLM_PORT": str(free_port()), "N_SAMPLES": "2", "TEMPERATURE": "1",
                    "ALLOW_MIXED": "1"}  # fmt: skip
        out = run_recipe(tmp_path, **{**env, **stand_ins, **settings})
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert list(report["runs"]) == ["global_step5", "final"]
    assert all(run["n"]["acc_da"] == 8 for run in report["runs"].values())
    scores = {name: run["acc_da"] for name, run in report["runs"].items()}
    best = max(scores, key=scores.get)  # the first on ties, as the recipe
    expected = save / "ckpt" / "global_step5_hf" if best == "global_step5" else save
    assert (tmp_path / "out" / "best_checkpoint.txt").read_text().strip() == str(expected)
    assert f"best checkpoint by acc_da: {expected} (acc_da={scores[best]})" in out.stdout
    assert (tmp_path / "out" / "report" / "radar.png").stat().st_size > 1000
    responses = (tmp_path / "out" / "final" / "responses.jsonl").read_text().splitlines()
    assert {json.loads(line)["model"] for line in responses} == {"final"}  # served under the checkpoint's name
