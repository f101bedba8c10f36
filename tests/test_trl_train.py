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

from recipe_helpers import gateway, write_prompts

from cdra_plugin.prm.config import GatewayConfig  # noqa: E402
from cdra_plugin.prm.gateway import Gateway  # noqa: E402
from cdra_plugin.prm.server import create_app  # noqa: E402
from cdra_plugin.stub import BackgroundServer, ScriptedLLM, prm_step_judge  # noqa: E402
from cdra_plugin.stub.processes import free_port
from cdra_plugin.trl.train import main, parse_args  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_cdpa_trl.sh"
LABEL = json.dumps({"preference": "I avoid crowds.", "question": "Where should I travel in May?"})
HUB = "Qwen/Qwen2.5-7B-Instruct"


def run_recipe(tmp_path, **env):
    # The recipe's python3 must be this interpreter (TRL installed), as it is in an activated environment; the
    # gateway is a port nothing listens on unless a test serves one there (never a real one on this machine's 5000).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    nobody = f"http://127.0.0.1:{free_port()}/get_reward"
    full = {**os.environ, "PATH": path, "DRY_RUN": "1", "REWARD_URL": nobody, **env}
    return subprocess.run(["bash", str(RECIPE)], capture_output=True, text=True, env=full, cwd=tmp_path)


@pytest.fixture
def prompts(tmp_path):
    return write_prompts(tmp_path / "rl_prompts.jsonl", LABEL, question="Where should I travel in May?")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PROMPTS": "missing.jsonl"}, "PROMPTS=missing.jsonl not found: set PROMPTS to an existing rl_prompts.jsonl"),
        ({"POLICY": "./no-such-checkpoint"}, "POLICY=./no-such-checkpoint: no such folder"),
        ({"POLICY": "checkpoints/policy-rft"}, "POLICY=checkpoints/policy-rft: no such folder"),  # never a hub id
        ({"INPUT_KEY": "prompt"}, 'first row has no "prompt" key (INPUT_KEY)'),
        ({"N_SAMPLES": "1"}, "N_SAMPLES=1: group advantages need at least 2 responses per prompt"),
        ({"N_SAMPLES": "abc"}, "N_SAMPLES=abc: expected a whole number >= 1"),
        ({"ESTIMATOR": "ppo"}, "ESTIMATOR=ppo: expected one of: cdpa grpo"),
        ({"CDPA_MODE": "tokenposition"}, "CDPA_MODE=tokenposition: expected one of: token_position group_steps"),
        ({"LR": "abc"}, "LR=abc: expected a number > 0"),
        ({"KL_COEF": "-1"}, "KL_COEF=-1: expected a number >= 0"),
        ({"TEMPERATURE": "0"}, "TEMPERATURE=0: expected a number > 0 (TRL divides the logits by it"),
        ({"MAX_STEPS": "0"}, "MAX_STEPS=0: expected a whole number >= 1"),
        ({"PROMPTS_PER_STEP": "x"}, "PROMPTS_PER_STEP=x: expected a whole number >= 1"),
        ({"GENERATE_MAX_LEN": "1k"}, "GENERATE_MAX_LEN=1k: expected a whole number >= 1"),
        ({"GPUS_PER_NODE": "eight"}, "GPUS_PER_NODE=eight: expected a whole number >= 1"),
        ({"MICRO_BATCH": "3"}, "N_SAMPLES = 160 must be a multiple of GPUS_PER_NODE x MICRO_BATCH = 24"),
        ({"PROMPTS_PER_STEP": "96"}, "64 prompt(s), fewer than PROMPTS_PER_STEP=96: set PROMPTS_PER_STEP=64 or lower"),
        ({"VLLM_MEMORY": "1.5"}, "VLLM_MEMORY=1.5: expected a number in (0, 1]"),
        ({"SAVE_STEPS": "often"}, "SAVE_STEPS=often: expected a whole number >= 1"),
        ({"REWARD_URL": "http://127.0.0.1:5000/score"}, "must be the gateway's http://HOST:PORT/get_reward"),
        ({"REWARD_AGGREGATION": "total"}, "REWARD_AGGREGATION=total: expected one of: min mean weighted_mean sum"),
        ({"AUTH_TOKEN_ENV": "CDRA_TEST_UNSET_TOKEN"}, "AUTH_TOKEN_ENV=CDRA_TEST_UNSET_TOKEN names an unset or empty"),
        ({"SKIP_HEALTH_CHECK": "yes"}, "SKIP_HEALTH_CHECK=yes: expected one of: 0 1"),
        ({"GPU_CHECK": "no"}, "GPU_CHECK=no: expected one of: 0 1"),
        ({"DRY_RUN": "true"}, "DRY_RUN=true: expected one of: 0 1"),
        ({"ACCELERATE_CONFIG": "./mine.yaml"}, "ACCELERATE_CONFIG=./mine.yaml: no such file"),
        ({"ACCELERATE_CONFIG": "zero9"}, "neither a file nor one of TRL's accelerate_configs"),
    ],
)  # fmt: skip
def test_recipe_checks_every_value(tmp_path, prompts, env, message):
    out = run_recipe(tmp_path, **{"PROMPTS": str(prompts), "POLICY": HUB, **env})
    assert out.returncode == 2 and out.stdout == "", out.stderr
    (line,) = [line for line in out.stderr.splitlines() if "error" in line]
    assert line.startswith("train_cdpa_trl.sh: error: ") and message in line, line


def test_a_dry_run_checks_the_gateway_and_warns_when_none_answers(tmp_path, prompts):
    env = {"PROMPTS": str(prompts), "POLICY": HUB}
    out = run_recipe(tmp_path, **env)
    assert out.returncode == 0 and out.stdout.startswith("accelerate launch "), out.stderr
    assert "warning: no PRM gateway answers at http://127.0.0.1:" in out.stderr and "DRY_RUN=1 goes on" in out.stderr
    assert "DRY_RUN=1: every value and input checked, TRL importable, and the gateway (above); accelerate and the " \
        "GPUs are not" in out.stderr  # fmt: skip
    with gateway() as url:
        out = run_recipe(tmp_path, REWARD_URL=url, **env)
        assert out.returncode == 0, out.stderr
        assert f"PRM gateway at {url}: ok, model pers-genprm, failure policy fail" in out.stderr
    with gateway(backend=f"http://127.0.0.1:{free_port()}/v1") as url:  # its PRM is down
        out = run_recipe(tmp_path, REWARD_URL=url, **env)
        assert out.returncode == 2 and out.stdout == ""
        assert f"train_cdpa_trl.sh: error: the PRM gateway at {url} is not usable: status down" in out.stderr
    out = run_recipe(tmp_path, SKIP_HEALTH_CHECK="1", **env)
    assert out.returncode == 0 and "SKIP_HEALTH_CHECK=1: the PRM gateway at" in out.stderr


def test_the_grpo_estimator_needs_the_papers_summed_reward_unless_told_otherwise(tmp_path, prompts):
    env = {"PROMPTS": str(prompts), "POLICY": HUB}
    with gateway() as url:  # the gateway's default aggregation, min
        out = run_recipe(tmp_path, REWARD_URL=url, ESTIMATOR="grpo", **env)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.splitlines()[-1] == (
            f"train_cdpa_trl.sh: error: the PRM gateway at {url} is not usable: its reward aggregation is "
            "min, not REWARD_AGGREGATION=sum (R_dense = the sum of the step scores, the paper's GRPO (with "
            "PRM) reward): restart it with REWARD_AGGREGATION=sum bash recipes/serve_prm.sh, or set "
            "REWARD_AGGREGATION=min to train on its reward"
        )
        # The explicit opt-out: GRPO on the gateway's default reward (min), knowingly not the paper's row.
        out = run_recipe(tmp_path, REWARD_URL=url, ESTIMATOR="grpo", REWARD_AGGREGATION="min", **env)
        assert out.returncode == 0 and "reward aggregation min" in out.stderr, out.stderr
        out = run_recipe(tmp_path, REWARD_URL=url, **env)  # CDPA reads the step scores: any aggregation
        assert out.returncode == 0, out.stderr
    with gateway(reward_aggregation="sum") as url:
        out = run_recipe(tmp_path, REWARD_URL=url, ESTIMATOR="grpo", **env)
        assert out.returncode == 0 and "reward aggregation sum" in out.stderr, out.stderr
        assert "--estimator grpo" in out.stdout and "--cdpa." not in out.stdout  # TRL's own trainer: no CDPA


def test_a_drop_gateway_serves_both_estimators(tmp_path, prompts):
    # Unlike OpenRLHF's GRPO baseline (train_grpo_baseline.sh refuses it): the entry point's GatewayReward gives a
    # dropped sample None, which TRL's own GRPOTrainer leaves out (test_entry_point_grpo_leaves_dropped_samples_out).
    with gateway(failure_policy="drop", reward_aggregation="sum") as url:
        for estimator in ("cdpa", "grpo"):
            out = run_recipe(tmp_path, REWARD_URL=url, ESTIMATOR=estimator, PROMPTS=str(prompts), POLICY=HUB)
            assert out.returncode == 0, out.stderr
            ok = f"PRM gateway at {url}: ok, model pers-genprm, failure policy drop, reward aggregation sum"
            assert ok in out.stderr and f"--estimator {estimator}" in out.stdout


def test_recipe_command_has_the_papers_defaults_and_trl_accepts_it(tmp_path, prompts, tiny_model_path):
    out = run_recipe(tmp_path, PROMPTS=str(prompts), POLICY=str(tiny_model_path), CDPA_MODE="min_form")
    assert out.returncode == 0, out.stderr
    command = shlex.split(out.stdout.strip().splitlines()[-1])
    assert command[:2] == ["accelerate", "launch"] and command[command.index("-m") + 1] == "cdra_plugin.trl.train"
    assert Path(command[command.index("--config_file") + 1]).name == "zero3.yaml"
    argv = command[command.index("-m") + 2 :] + ["--use_cpu", "true"]  # bf16 is validated against a GPU otherwise
    script, config, cdpa = parse_args(argv)
    assert (script.prompts, script.model_name_or_path) == (str(prompts), str(tiny_model_path))
    assert script.estimator == "cdpa" and cdpa.mode == "min_form"
    assert (config.num_generations, config.temperature, config.max_steps) == (5, 1.0, 400)  # the paper's Sec. 3.1
    assert (config.beta, config.loss_type, config.use_vllm) == (1e-3, "dr_grpo", True)
    assert config.per_device_train_batch_size * 8 * config.gradient_accumulation_steps == 32 * 5  # prompts x G


def test_entry_point_trains_through_the_gateway(tmp_path, prompts, tiny_model_path):
    out_dir = tmp_path / "out"
    with ScriptedLLM(prm_step_judge(default=0.5), model="prm") as llm:
        # the tiny random policy writes token soup, which the degenerate-step guard would score without the PRM
        config = GatewayConfig(backend=llm.base_url, model="prm", failure_policy="drop", degenerate_guard=False)
        with BackgroundServer(create_app(Gateway(config))) as gateway:
            main(["--model_name_or_path", str(tiny_model_path), "--prompts", str(prompts),
                  "--reward_url", gateway.url + "/get_reward", "--output_dir", str(out_dir), "--max_steps", "1",
                  "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
                  "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--cdpa.mode", "group_steps",
                  "--disable_tqdm", "true"])  # fmt: skip
        assert len(llm.requests) >= 4  # every completion was scored by the PRM behind the gateway
    assert (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file()


def test_entry_point_grpo_leaves_dropped_samples_out(tmp_path, prompts, tiny_model_path):
    """--estimator grpo is TRL's own GRPOTrainer on GatewayReward: samples the gateway drops reach TRL as None, so
    the logged reward is undefined (TRL logs NaN as null), never the mean of the protocol's placeholder 0.0."""
    out_dir = tmp_path / "out"
    unscored = "Reasoning: I cannot judge this."  # every step unscored: every sample dropped
    with ScriptedLLM(lambda request: unscored, model="prm") as llm:
        config = GatewayConfig(
            backend=llm.base_url,
            model="prm",
            failure_policy="drop",
            reward_aggregation="sum",
            degenerate_guard=False,
            client_options={"retries": 0},
        )  # every step to the PRM
        with BackgroundServer(create_app(Gateway(config))) as gateway:
            main(["--model_name_or_path", str(tiny_model_path), "--prompts", str(prompts), "--estimator", "grpo",
                  "--reward_url", gateway.url + "/get_reward", "--output_dir", str(out_dir), "--max_steps", "1",
                  "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
                  "--use_cpu", "true", "--report_to", "none", "--logging_steps", "1", "--save_steps", "1",
                  "--disable_tqdm", "true"])  # fmt: skip
    (logged,) = json.loads((out_dir / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    assert logged["prm/failed_frac"] == 1.0 and logged["reward"] is None, logged  # 0.0 if given the placeholder


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cdpa.trace_path", "t.jsonl"], "--cdpa.trace_path is honoured only by cdra-train (OpenRLHF), not by"),
        (["--cdpa.mode", "eq3"], "--cdpa.mode must be one of token_position, group_steps, process, min_form, outcome"),
        (["--estimator", "grpo", "--cdpa.mode", "process"], "--cdpa.* options apply only with --estimator cdpa"),
    ],
)  # fmt: skip
def test_cdpa_options_are_cdra_trains_and_checked_the_same(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model_name_or_path", "m", "--prompts", "p.jsonl", "--use_cpu", "true", *argv])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]  # after the usage
    assert line.startswith("python -m cdra_plugin.trl.train: error: ") and message in line, line


def test_the_old_aggregation_name_is_read_with_a_warning():
    argv = ["--model_name_or_path", "m", "--prompts", "p", "--use_cpu", "true", "--cdpa.outcome_aggregation"]
    with pytest.warns(FutureWarning, match="--cdpa.outcome_aggregation token_mean is now called weighted_mean"):
        _, _, cdpa = parse_args([*argv, "token_mean"])
    assert cdpa.outcome_aggregation == "weighted_mean"


def test_a_prompts_file_without_the_label_column_is_named(tmp_path, tiny_model_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"input": "q"}) + "\n")
    with gateway() as url, pytest.raises(SystemExit, match=r"prompts.jsonl: no column 'label' \(--label_key\)"):
        main(["--model_name_or_path", str(tiny_model_path), "--prompts", str(bad), "--output_dir", str(tmp_path),
              "--use_cpu", "true", "--reward_url", url])  # fmt: skip
