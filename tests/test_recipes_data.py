"""recipes/train_prm_sft.sh and recipes/train_policy_rft.sh: syntax, input checks before launch, and a command line
that the installed openrlhf.cli.train_sft accepts (option names and arity read from its source with ``ast``).

Nothing is launched: a failing input check exits before the launcher is looked up, and ``DRY_RUN=1`` prints the
command instead of running it.
"""

import ast
import importlib.util
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"train_prm_sft.sh": "prm_sft.jsonl", "train_policy_rft.sh": "rft.jsonl"}
ROW = {"input": [{"role": "user", "content": "p"}], "output": [{"role": "assistant", "content": "a"}]}


def run(recipe: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    # A PATH without deepspeed: if a recipe got past its input checks it would stop at the launcher check instead.
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["bash", str(ROOT / "recipes" / recipe)], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def train_sft_options() -> dict[str, bool]:
    """{option: takes a value} for every add_argument of the installed openrlhf/cli/train_sft.py."""
    source = Path(importlib.util.find_spec("openrlhf.cli.train_sft").origin).read_text()
    options = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            action = next((k.value.value for k in node.keywords if k.arg == "action"), None)
            options[node.args[0].value] = action not in ("store_true", "store_false")
    return options


def data_file(tmp_path: Path, name: str, row: dict = ROW) -> Path:
    path = tmp_path / "data" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_missing_data_is_reported_before_launch(recipe, tmp_path):
    proc = run(recipe, tmp_path, DATA=str(tmp_path / "nope" / RECIPES[recipe]))
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{recipe}: error: DATA={tmp_path}/nope/{RECIPES[recipe]} not found" in proc.stderr
    assert "cdra data prepare" in proc.stderr


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_bad_inputs_each_get_their_message(recipe, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "is empty: no example" in run(recipe, tmp_path, DATA=str(empty)).stderr
    prompts = data_file(tmp_path, "rl_prompts.jsonl", {"input": [], "label": "{}"})
    proc = run(recipe, tmp_path, DATA=str(prompts))
    assert proc.returncode == 2 and 'first row has no "output" key (OUTPUT_KEY)' in proc.stderr
    good = str(data_file(tmp_path, RECIPES[recipe]))
    proc = run(recipe, tmp_path, DATA=good, MODEL=str(tmp_path / "no-model"))
    assert proc.returncode == 2 and f"MODEL={tmp_path}/no-model: no such folder" in proc.stderr
    proc = run(recipe, tmp_path, DATA=good, MODEL=str(tmp_path))
    assert proc.returncode == 2 and "has no config.json" in proc.stderr
    proc = run(recipe, tmp_path, DATA=good, HOSTFILE=str(tmp_path / "hosts"))
    assert proc.returncode == 2 and "HOSTFILE=" in proc.stderr
    proc = run(recipe, tmp_path, DATA=good)
    assert proc.returncode == 2 and "'deepspeed' is not on PATH" in proc.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LR": "abc"}, "LR=abc: expected a number > 0"),
        ({"LR": "0"}, "LR=0: expected a number > 0"),
        ({"EPOCHS": "0"}, "EPOCHS=0: expected a whole number >= 1"),
        ({"BATCH_SIZE": "x"}, "BATCH_SIZE=x: expected a whole number >= 1"),
        ({"BATCH_SIZE": "64", "MICRO_BATCH_SIZE": "3"}, "BATCH_SIZE=64 is not a multiple of MICRO_BATCH_SIZE=3"),
        ({"WARMUP_RATIO": "2"}, "WARMUP_RATIO=2: expected a number in [0, 1]"),
        ({"MAX_LEN": "-5"}, "MAX_LEN=-5: expected a whole number >= 1"),
        ({"SAVE_STEPS": "-2"}, "SAVE_STEPS=-2: expected a whole number >= -1"),
        ({"ZERO_STAGE": "4"}, "ZERO_STAGE=4: expected a whole number >= 0 and <= 3"),
        ({"PARAM_DTYPE": "fp32"}, "PARAM_DTYPE=fp32: expected one of: bf16 fp16"),
        ({"PACKING": "yes"}, "PACKING=yes: expected one of: 0 1"),
        ({"NUM_GPUS": "0"}, "NUM_GPUS=0: expected a whole number >= 1"),
        ({"DRY_RUN": "yes"}, "DRY_RUN=yes: expected one of: 0 1"),
        ({"MODEL": "checkpoints/pers-genprm"}, "MODEL=checkpoints/pers-genprm: no such folder"),  # not a hub id
        ({"MODEL": "a b"}, "MODEL=a b is neither a local folder nor a hub id"),
        ({"EVAL_DATA": "/held_out.jsonl"}, "EVAL_DATA=/held_out.jsonl not found: set it to held-out rows in the DATA"),
    ],
)
def test_every_value_is_checked_in_a_dry_run_too(tmp_path, env, message):
    good = str(data_file(tmp_path, "prm_sft.jsonl"))
    proc = run("train_prm_sft.sh", tmp_path, **{"DATA": good, "DRY_RUN": "1", **env})
    assert proc.returncode == 2 and proc.stdout == "", proc
    (line,) = [line for line in proc.stderr.splitlines() if "error" in line]  # one line
    assert line.startswith("train_prm_sft.sh: error: ") and message in line, line


def test_missing_data_hint_never_suggests_writing_to_the_root(tmp_path):
    proc = run("train_prm_sft.sh", tmp_path, DATA="/prm_sft.jsonl")
    assert "--output /" not in proc.stderr and "writes DIR/prm_sft.jsonl" in proc.stderr
    proc = run("train_prm_sft.sh", tmp_path, DATA=str(tmp_path / "data" / "deeppref" / "prm_sft.jsonl"))
    assert f"'cdra data prepare --input <DeepPref files> --output {tmp_path}/data/deeppref'" in proc.stderr


def test_data_beside_an_interrupted_prepare_commit_is_refused(tmp_path):
    good = data_file(tmp_path, "prm_sft.jsonl")
    (good.parent / ".cdra-commit.json").write_text("{}")
    proc = run("train_prm_sft.sh", tmp_path, DATA=str(good), DRY_RUN="1")
    assert proc.returncode == 2 and "a crash interrupted 'cdra data prepare' writing this folder" in proc.stderr


def test_hub_ids_are_taken_as_such_and_the_dry_run_says_what_it_skipped(tmp_path):
    proc = run("train_prm_sft.sh", tmp_path, DATA=str(data_file(tmp_path, "prm_sft.jsonl")), DRY_RUN="1")
    assert proc.returncode == 0 and proc.stdout.startswith("deepspeed ")
    notes = [line for line in proc.stderr.splitlines() if not line.startswith("  ")]  # settings: "  NAME=value"
    assert notes == [
        "train_prm_sft.sh: MODEL=Qwen/Qwen2.5-7B-Instruct is no local folder: taken for a Hugging Face hub id "
        "(downloaded at launch unless cached)",
        "train_prm_sft.sh: settings:",
        "train_prm_sft.sh: DRY_RUN=1: every value and input checked; deepspeed, openrlhf and the GPUs are not. "
        "The command:",
    ]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_dry_run_command_is_accepted_by_the_installed_train_sft(recipe, tmp_path):
    good = str(data_file(tmp_path, RECIPES[recipe]))
    proc = run(recipe, tmp_path, DATA=good, DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:3] == ["deepspeed", "--module", "openrlhf.cli.train_sft"]
    known, args = train_sft_options(), argv[3:]
    pairs, i = {}, 0
    while i < len(args):
        option = args[i]
        assert option in known, f"{option} is not an option of the installed openrlhf.cli.train_sft"
        takes_value = known[option]
        pairs[option] = args[i + 1] if takes_value else True
        if takes_value:
            assert not args[i + 1].startswith("--"), f"{option} needs a value"
        i += 2 if takes_value else 1
    # Chat-formatted input/output rows, loss on the assistant part only (no pretrain mode), Qwen2.5-7B-Instruct.
    assert pairs["--data.dataset"] == good
    assert (pairs["--data.input_key"], pairs["--data.output_key"], pairs["--data.apply_chat_template"]) == (
        "input",
        "output",
        True,
    )
    assert "--model.pretrain_mode_enable" not in pairs and "--data.multiturn" not in pairs
    assert pairs["--model.model_name_or_path"] == "Qwen/Qwen2.5-7B-Instruct"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_value_is_overridable(recipe, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    hosts = tmp_path / "hosts"
    hosts.write_text("node1 slots=8\n")
    env = {
        "DATA": str(data_file(tmp_path, RECIPES[recipe])),
        "EVAL_DATA": str(data_file(tmp_path, "held_out.jsonl")),
        "MODEL": str(model),
        "SAVE_PATH": str(tmp_path / "save"),
        "LR": "3e-6",
        "EPOCHS": "7",
        "BATCH_SIZE": "16",
        "MICRO_BATCH_SIZE": "1",
        "MAX_LEN": "1024",
        "ZERO_STAGE": "2",
        "PACKING": "0",
        "HOSTFILE": str(hosts),
        "NUM_GPUS": "4",
        "EXTRA_ARGS": "--ds.lora.rank 16 --ds.lora.alpha 32",
        "DRY_RUN": "1",
    }
    proc = run(recipe, tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    cmd = proc.stdout
    for expected in [
        f"--hostfile {hosts} --num_gpus 4 --module",
        f"--eval.dataset {tmp_path}/data/held_out.jsonl",
        f"--model.model_name_or_path {model}",
        f"--ckpt.output_dir {tmp_path}/save",
        "--adam.lr 3e-6",
        "--train.max_epochs 7",
        "--train.batch_size 16",
        "--train.micro_batch_size 1",
        "--data.max_len 1024",
        "--ds.zero_stage 2",
        "--ds.lora.rank 16 --ds.lora.alpha 32",
    ]:
        assert expected in cmd, expected
    assert "--ds.packing_samples" not in cmd
    assert run(recipe, tmp_path, **{**env, "PACKING": "yes"}).returncode == 2


def test_recipes_and_scripts_are_executable():  # `recipes/train_cdpa.sh` works as written, without `bash`
    for path in [*(ROOT / "recipes").glob("*.sh"), ROOT / "scripts" / "test.sh", ROOT / "scripts" / "demo.sh"]:
        assert os.access(path, os.X_OK), path
