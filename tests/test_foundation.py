"""The host imports on any machine, the pinned version, the tiny offline model, the `cdra` command, and the README's
two commands (scripts/test.sh, scripts/demo.sh) on a fresh machine and on a built one."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parents[1]  # the environment running these tests


def test_host_modules_import_and_version_is_pinned():
    import openrlhf.cli.train_ppo_ray  # noqa: F401
    import openrlhf.models.loss  # noqa: F401
    import openrlhf.trainer.ppo_trainer  # noqa: F401
    import openrlhf.trainer.ppo_utils.experience_maker  # noqa: F401

    from cdra_plugin.openrlhf import HOST_VERSION, require_host_version

    assert importlib.metadata.version("openrlhf") == HOST_VERSION == "0.11.2"
    require_host_version()


def test_host_version_mismatch_fails_loudly(monkeypatch):
    from cdra_plugin import openrlhf as adapter

    monkeypatch.setattr(adapter.importlib.metadata, "version", lambda name: "0.12.0")
    with pytest.raises(RuntimeError, match=r"openrlhf==0\.11\.2.*found openrlhf==0\.12\.0"):
        adapter.require_host_version()


def test_core_does_not_import_the_host():
    code = (
        "import sys, cdra_plugin.cdpa.steps, cdra_plugin.cdpa.advantage, cdra_plugin.cdpa.prompts, "
        "cdra_plugin.cdpa.carrier, cdra_plugin.cdpa.detok, cdra_plugin.traces, cdra_plugin.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openrlhf', 'deepspeed', 'vllm', 'ray')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tiny_model_loads_like_a_hub_checkpoint(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert tok.is_fast and model.config.model_type == "qwen2"
    text = "Step 1: café 東京 🙂\n\nStep 2: done"
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    assert tok.decode(enc["input_ids"]) == text
    assert enc["offset_mapping"][0][0] == 0 and enc["offset_mapping"][-1][1] == len(text)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([enc["input_ids"]])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_cdra_command_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "cdra_plugin.cli", "--version"], capture_output=True, text=True, check=True
    )
    from cdra_plugin import __version__

    assert out.stdout.strip() == f"cdra-plugin {__version__}"
    out = subprocess.run([sys.executable, "-m", "cdra_plugin.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert all(command in out.stdout for command in ("data", "prm", "traces"))


@pytest.mark.skipif(importlib.util.find_spec("_pynvml_redirector") is None, reason="no deprecated pynvml installed")
def test_cdra_silences_the_pynvml_warning_and_no_other():
    # Every `cdra` command that imported torch printed "FutureWarning: The pynvml package is deprecated ...".
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import sys, warnings; from cdra_plugin.cli import main; status = main(['traces', 'show', 'missing.jsonl']); "
        "warnings.warn('another warning', FutureWarning); sys.exit(status)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "cdra traces show: " in out.stderr  # it imported torch
    assert "pynvml" not in out.stderr and "FutureWarning: another warning" in out.stderr


@pytest.mark.parametrize("script", ["test.sh", "demo.sh"])
def test_each_of_the_two_commands_builds_a_missing_environment_first(tmp_path, script):
    # An interpreter that does not exist makes setup_env.sh stop at once: enough to see that it was started.
    env = {**os.environ, "CDRA_VENV": str(tmp_path / "venv"), "CDRA_PYTHON": str(tmp_path / "no-python")}
    out = subprocess.run([str(ROOT / "scripts" / script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1
    assert f"[setup_env] error: {tmp_path}/no-python not found; set CDRA_PYTHON" in out.stderr


built = pytest.mark.skipif(not (VENV / ".cdra-env-stamp").exists(), reason="not an environment from setup_env.sh")


@built
def test_test_sh_checks_and_tests_this_checkout_in_a_built_environment():
    env = {**os.environ, "CDRA_VENV": str(VENV), "PYTHONPATH": ""}
    args = ["tests/test_data_paths.py::test_single_chain_and_single_step", "-p", "no:cacheprovider"]
    out = subprocess.run([str(ROOT / "scripts" / "test.sh"), *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[setup_env]" not in out.stdout + out.stderr  # nothing rebuilt
    assert "All checks passed!" in out.stdout and "files already formatted" in out.stdout and "1 passed" in out.stdout


@built
def test_demo_sh_runs_cdra_demo_of_this_checkout():
    env = {**os.environ, "CDRA_VENV": str(VENV), "PYTHONPATH": ""}
    out = subprocess.run([str(ROOT / "scripts" / "demo.sh"), "--help"], capture_output=True, text=True, env=env)
    if "invalid choice: 'demo'" in out.stderr:
        pytest.skip("`cdra demo` is not in this checkout yet")
    assert out.returncode == 0 and out.stdout.startswith("usage: cdra demo")
