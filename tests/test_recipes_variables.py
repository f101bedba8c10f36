"""Every recipe knows its own variables (recipes/lib/variables.py): an environment variable that looks like one of them
and is not (a near miss, a case slip, an unknown name under a prefix the recipe owns) stops it in one line naming the
closest real one, while the ordinary variables of a training machine pass; and every dry run prints the settings it
would launch with, one per line."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
LAUNCHERS = sorted(p.name for p in RECIPES.glob("*.sh"))

# What a GPU node's environment holds besides the recipe's own variables; none of it may stop a recipe.
ORDINARY = {
    "CUDA_VISIBLE_DEVICES": "0,1",
    "HF_HOME": "/data/hf",
    "HF_TOKEN": "hf_x",
    "RAY_DEDUP_LOGS": "0",
    "RAY_memory_monitor_refresh_ms": "0",
    "VLLM_USE_V1": "1",
    "VLLM_PORT": "51000",  # vLLM's own; eval.sh has one too
    "VLLM_HOST_IP": "10.0.0.2",
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    "MAX_JOBS": "8",
    "GPU_DEVICE_ORDINAL": "0",
    "OMP_NUM_THREADS": "8",
    "NCCL_DEBUG": "WARN",
    "TORCH_CUDA_ARCH_LIST": "9.0",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_OFFLINE": "1",
    "ACCELERATE_LOG_LEVEL": "info",
    "WANDB_API_KEY": "x",
    "OPENAI_API_KEY": "sk-x",
    "DEEPSEEK_API_KEY": "sk-x",
    "PROMPT_COMMAND": "history -a",
    "LOG_LEVEL": "info",
    "CDRA_VENV": "/opt/venv",
    "NO_COLOR": "1",
    "TMPDIR": "/tmp",
    "http_proxy": "http://proxy:3128",
    "no_proxy": "localhost",
    "SLURM_JOB_ID": "42",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "8",
}


def run(recipe: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(RECIPES / recipe)], env={**base, "DRY_RUN": "1", **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    (line,) = proc.stderr.splitlines()  # one line, before any other check or note
    return line


@pytest.mark.parametrize(
    "recipe, env, suspect, meant",
    [
        ("train_cdpa.sh", {"CDPA_MDOE": "process"}, "CDPA_MDOE", "CDPA_MODE"),  # two letters swapped
        ("train_cdpa.sh", {"N_SAMPLE": "8"}, "N_SAMPLE", "N_SAMPLES"),  # one dropped
        ("train_cdpa.sh", {"n_samples": "8"}, "n_samples", "N_SAMPLES"),  # case
        ("train_cdpa.sh", {"GPU_PER_NODES": "4"}, "GPU_PER_NODES", "GPUS_PER_NODE"),  # two edits of a long name
        ("train_cdpa.sh", {"CDPA_EPS": "0.1"}, "CDPA_EPS", "CDPA_MODE or CDPA_FAILURE_POLICY"),  # an owned prefix
        ("train_grpo_baseline.sh", {"REWARD_AGGREGATON": "sum"}, "REWARD_AGGREGATON", "REWARD_AGGREGATION"),
        ("train_cdpa_trl.sh", {"CDPA_MDOE": "process"}, "CDPA_MDOE", "CDPA_MODE"),
        ("serve_prm.sh", {"GATEWAY_PROT": "5001"}, "GATEWAY_PROT", "GATEWAY_PORT"),
        ("serve_prm.sh", {"PRM_MODLE": "x"}, "PRM_MODLE", "PRM_MODEL"),
        ("serve_prm.sh", {"VLLM_HOTS": "0.0.0.0"}, "VLLM_HOTS", "VLLM_HOST"),  # near misses count in any namespace
        ("eval.sh", {"JUDGE_MODLE": "x"}, "JUDGE_MODLE", "JUDGE_MODEL"),
        ("eval.sh", {"SELECTBY": "m_th"}, "SELECTBY", "SELECT_BY"),
        ("build_deeppref.sh", {"GENERATOR_MODELS": "x"}, "GENERATOR_MODELS", "GENERATOR_MODEL"),
        ("train_prm_sft.sh", {"EPOCH": "3"}, "EPOCH", "EPOCHS"),  # a variable of the recipe itself
        ("train_policy_rft.sh", {"MICRO_BATCHSIZE": "1"}, "MICRO_BATCHSIZE", "MICRO_BATCH_SIZE"),  # of lib/sft.sh
    ],
)
def test_a_variable_that_looks_like_the_recipes_own_stops_it(tmp_path, recipe, env, suspect, meant):
    line = error_line(run(recipe, tmp_path, **env))
    source = "train_cdpa.sh" if recipe == "train_grpo_baseline.sh" else recipe  # its variables are train_cdpa.sh's
    assert line == (
        f"{recipe}: error: {suspect} is not a variable of {recipe} (did you mean {meant}?): it would be ignored; "
        f"unset it, or use one from the top of {RECIPES / source}"
    )


def test_every_typo_is_named_in_the_one_line(tmp_path):
    line = error_line(run("train_cdpa.sh", tmp_path, CDPA_MDOE="process", N_SAMPLE="8"))
    assert line.startswith(
        "train_cdpa.sh: error: CDPA_MDOE (did you mean CDPA_MODE?) and N_SAMPLE (did you mean N_SAMPLES?) are not "
        "variables of train_cdpa.sh: they would be ignored"
    )


@pytest.mark.parametrize("recipe", LAUNCHERS)
def test_the_ordinary_variables_of_a_training_machine_pass(tmp_path, recipe):
    proc = run(recipe, tmp_path, **ORDINARY)
    assert "is not a variable of" not in proc.stderr and "are not variables of" not in proc.stderr, proc.stderr


def test_a_variable_named_by_a_recipes_env_variable_holds_a_secret_and_passes(tmp_path):
    # JUDGE_API_KEY_ENV names the variable that holds the judge's key: it may look like eval.sh's JUDGE_ ones.
    proc = run("eval.sh", tmp_path, JUDGE_API_KEY_ENV="JUDGE_KEY", JUDGE_KEY="sk-secret")
    assert "not a variable" not in proc.stderr, proc.stderr
    line = error_line(run("eval.sh", tmp_path, JUDGE_KEY="sk-secret"))  # without it, a typo like any other
    assert "JUDGE_KEY is not a variable of eval.sh" in line and "sk-secret" not in line  # values are never shown


def dry_runs(tmp_path: Path) -> dict[str, dict]:
    """A passing dry run of every launcher: its environment."""
    data = tmp_path / "data"
    data.mkdir()
    sft = data / "prm_sft.jsonl"
    sft.write_text(json.dumps({"input": [], "output": []}) + "\n")
    rft = data / "rft.jsonl"
    rft.write_text(sft.read_text())
    label = json.dumps({"preference": "p", "question": "q"})
    prompts = data / "rl_prompts.jsonl"
    prompts.write_text((json.dumps({"input": [{"role": "user", "content": "q"}], "label": label}) + "\n") * 64)
    pairs = data / "eval.jsonl"
    pairs.write_text(json.dumps({"id": "t/0", "topic": "t", "preference": "p", "question": "q"}) + "\n")
    rl = {"PROMPTS": str(prompts), "POLICY": "Qwen/Qwen2.5-7B-Instruct", "SKIP_HEALTH_CHECK": "1", "N_SAMPLES": "08"}
    runs = {
        "build_deeppref.sh": {"INPUT": str(pairs), "LIMIT": "3", "EVALUATOR_KEY_ENV": ""},
        "eval.sh": {"CHECKPOINT": "org/policy", "DATA": str(pairs), "JUDGE_URL": "http://127.0.0.1:9/v1",
                    "JUDGE_MODEL": "judge", "N_SAMPLES": "08", "TEMPERATURE": "1"},
        "serve_prm.sh": {"PRM_MODEL": "org/prm", "MAX_STEPS": "08"},
        "train_cdpa.sh": rl,
        "train_grpo_baseline.sh": rl,
        "train_prm_sft.sh": {"DATA": str(sft), "EPOCHS": "08"},
        "train_policy_rft.sh": {"DATA": str(rft), "EPOCHS": "08"},
    }  # fmt: skip
    if importlib.util.find_spec("trl") is not None:  # the TRL recipe checks that TRL imports
        runs["train_cdpa_trl.sh"] = rl
    return runs


def test_every_dry_run_prints_its_settings_one_per_line(tmp_path):
    runs = dry_runs(tmp_path)
    assert set(LAUNCHERS) - set(runs) <= {"train_cdpa_trl.sh"}
    for recipe, env in runs.items():
        proc = run(recipe, tmp_path, **env)
        assert proc.returncode == 0, (recipe, proc.stderr)
        lines = proc.stderr.splitlines()
        start = lines.index(f"{recipe}: settings:") + 1
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  "))
        assert lines[end].startswith(f"{recipe}: DRY_RUN=1: every value"), (recipe, proc.stderr)  # then the command
        values = dict(line[2:].split("=", 1) for line in lines[start:end])  # NAME=value, one per line
        assert values["DRY_RUN"] == "1" and values["PYTHON"] == sys.executable, recipe
        for key, value in env.items():  # as the run uses them: whole numbers normalised ("08" -> 8)
            assert values[key] == (str(int(value)) if value.startswith("0") else value), (recipe, key)
    cdpa = run("train_cdpa.sh", tmp_path, **runs["train_cdpa.sh"])
    assert "  SAVE_PATH=" + str(tmp_path / "checkpoints" / "policy-cdpa") in cdpa.stderr.splitlines()  # absolute
    assert "  ESTIMATOR=group_norm" in run("train_grpo_baseline.sh", tmp_path, **runs["train_grpo_baseline.sh"]).stderr
