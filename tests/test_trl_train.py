"""recipes/train_cdpa_trl.sh and its entry point `python -m cdra_plugin.trl.train`: input checks, a command TRL's own
argument parser accepts with the paper's defaults, and one real training step through the gateway on the CPU."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'cdra-plugin[trl]' (setup_env.sh has it)")

from transformers import HfArgumentParser  # noqa: E402

from cdra_plugin.cli import build_parser  # noqa: E402
from cdra_plugin.prm.cli import build_gateway  # noqa: E402
from cdra_plugin.prm.server import create_app  # noqa: E402
from cdra_plugin.testing import BackgroundServer, ScriptedLLM, prm_step_judge  # noqa: E402
from cdra_plugin.trl.train import ScriptArguments, main  # noqa: E402
from cdra_plugin.trl.trainer import CDPAConfig  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_cdpa_trl.sh"
LABEL = json.dumps({"preference": "I avoid crowds.", "question": "Where should I travel in May?"})


def run_recipe(tmp_path, **env):
    # the recipe's python3 must be this interpreter (TRL installed), as it is in an activated environment
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    full = {**os.environ, "PATH": path, "DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(RECIPE)], capture_output=True, text=True, env=full, cwd=tmp_path)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "rl_prompts.jsonl"
    row = {"input": [{"role": "user", "content": "Where should I travel in May?"}], "label": LABEL}
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(8)))
    return path


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PROMPTS": "missing.jsonl"}, "PROMPTS=missing.jsonl not found: run 'cdra data prepare"),
        ({"POLICY": "./no-such-checkpoint"}, "has no config.json"),
        ({"N_SAMPLES": "1"}, "need at least 2 responses per prompt"),
        ({"ESTIMATOR": "ppo"}, "ESTIMATOR=ppo: cdpa or grpo"),
        ({"MICRO_BATCH": "3"}, "must be a multiple of GPUS_PER_NODE*MICRO_BATCH=24"),
        ({"REWARD_URL": "http://127.0.0.1:5000/score"}, "must be the gateway's http://HOST:PORT/get_reward"),
        ({"ACCELERATE_CONFIG": "zero9"}, "neither a file nor one of TRL's accelerate_configs"),
    ],
)
def test_recipe_checks_its_inputs(tmp_path, prompts, env, message):
    out = run_recipe(tmp_path, **{"PROMPTS": str(prompts), "POLICY": "Qwen/Qwen2.5-7B-Instruct", **env})
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_recipe_command_has_the_papers_defaults_and_trl_accepts_it(tmp_path, prompts, tiny_model_path):
    out = run_recipe(tmp_path, PROMPTS=str(prompts), POLICY=str(tiny_model_path), CDPA_MODE="process")
    assert out.returncode == 0, out.stderr
    command = shlex.split(out.stdout.strip().splitlines()[-1])
    assert command[:2] == ["accelerate", "launch"] and command[command.index("-m") + 1] == "cdra_plugin.trl.train"
    assert Path(command[command.index("--config_file") + 1]).name == "zero3.yaml"
    argv = command[command.index("-m") + 2 :] + ["--use_cpu", "true"]  # bf16 is validated against a GPU otherwise
    script, config = HfArgumentParser((ScriptArguments, CDPAConfig)).parse_args_into_dataclasses(argv)
    assert (script.prompts, script.model_name_or_path) == (str(prompts), str(tiny_model_path))
    assert script.estimator == "cdpa"
    assert (config.num_generations, config.temperature, config.max_steps) == (5, 1.0, 400)  # the paper's Sec. 3.1
    assert (config.cdpa_mode, config.beta, config.loss_type, config.use_vllm) == ("process", 1e-3, "dr_grpo", True)
    assert config.per_device_train_batch_size * 8 * config.gradient_accumulation_steps == 32 * 5  # prompts x G


def test_entry_point_trains_through_the_gateway(tmp_path, prompts, tiny_model_path):
    out_dir = tmp_path / "out"
    with ScriptedLLM(prm_step_judge(default=0.5)) as llm:
        argv = ["prm", "serve", "--backend", llm.base_url, "--model", "prm", "--failure-policy", "drop"]
        with BackgroundServer(create_app(build_gateway(build_parser().parse_args(argv)))) as gateway:
            main(["--model_name_or_path", str(tiny_model_path), "--prompts", str(prompts),
                  "--reward_url", gateway.url + "/get_reward", "--output_dir", str(out_dir), "--max_steps", "1",
                  "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
                  "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--cdpa_mode", "group_steps",
                  "--disable_tqdm", "true"])  # fmt: skip
        assert len(llm.requests) >= 4  # every completion was scored by the PRM behind the gateway
    assert (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file()


def test_a_prompts_file_without_the_label_column_is_named(tmp_path, tiny_model_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"input": "q"}) + "\n")
    with pytest.raises(SystemExit, match=r"prompts.jsonl: no column 'label' \(--label_key\)"):
        main(["--model_name_or_path", str(tiny_model_path), "--prompts", str(bad), "--output_dir", str(tmp_path),
              "--use_cpu", "true"])  # fmt: skip
