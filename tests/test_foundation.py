"""Issue 2: the host imports on any machine, the pinned version, the tiny offline model, the `cdra` command."""

import importlib.metadata
import subprocess
import sys

import pytest
import torch


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
        "import sys, cdra_plugin.steps, cdra_plugin.advantage, cdra_plugin.prompts, cdra_plugin.carrier, "
        "cdra_plugin.detok, cdra_plugin.traces, cdra_plugin.cli; "
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
    assert out.returncode == 0 and "traces" in out.stdout
