"""Every training and serving recipe checks, before it launches anything, that torch sees the GPUs it was told to
use, and says so in one line. On a machine without a usable GPU (this suite's CI) each must stop there; the
recipes run at once, since each spends its time importing torch."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdra_plugin.stub.processes import free_port

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a usable GPU")
def test_every_recipe_stops_without_the_gpus_it_was_told_to_use(tmp_path):
    sft = tmp_path / "prm_sft.jsonl"
    sft.write_text(json.dumps({"input": [], "output": []}) + "\n")
    prompts = tmp_path / "rl_prompts.jsonl"
    prompts.write_text((json.dumps({"input": [], "label": "{}"}) + "\n") * 32)
    rl = {"PROMPTS": str(prompts), "POLICY": "Qwen/Qwen2.5-7B-Instruct", "SKIP_HEALTH_CHECK": "1"}
    local_ray, no_ray = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    pairs = tmp_path / "eval.jsonl"
    pairs.write_text(json.dumps({"preference": "p", "question": "q"}) + "\n")
    judge = {"DATA": str(pairs), "JUDGE_URL": "http://127.0.0.1:9/v1", "JUDGE_MODEL": "judge"}
    cases = {  # recipe, its environment, the start of its last line
        "sft": ("train_prm_sft.sh", {"DATA": str(sft), "NUM_GPUS": "2"}, "needs 2 CUDA GPU(s) (NUM_GPUS=2): torch "),
        "serve": ("serve_prm.sh", {"PRM_MODEL": "org/prm", "GPUS": "0,3", "LOG_DIR": str(tmp_path / "logs")},
                  "needs 4 CUDA GPU(s) (GPUS=0,3): torch "),
        "rl, this node": ("train_cdpa.sh", {**rl, "RAY_ADDRESS": local_ray},
                          "needs 8 CUDA GPU(s) (GPUS_PER_NODE=8 on this node): torch "),
        "rl, a cluster": ("train_cdpa.sh", {**rl, "RAY_ADDRESS": no_ray, "NNODES": "2"},
                          f"no Ray cluster answers at RAY_ADDRESS={no_ray}"),
        "eval": ("eval.sh", {**judge, "CHECKPOINT": "org/policy", "GPUS": "0,1", "OUT_DIR": str(tmp_path / "eval")},
                 "needs 2 CUDA GPU(s) (GPUS=0,1): torch "),
    }  # fmt: skip
    if importlib.util.find_spec("trl") is not None:  # the TRL recipe checks for TRL first (an optional extra)
        cases["rl, TRL"] = ("train_cdpa_trl.sh", rl, "needs 8 CUDA GPU(s) (GPUS_PER_NODE=8): torch ")
    base = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    procs = {
        name: subprocess.Popen(
            ["bash", str(RECIPES / recipe)],
            env={**base, **env},
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for name, (recipe, env, _) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        recipe, _, message = cases[name]
        assert proc.returncode == 2 and out == "", (name, err)
        last = err.splitlines()[-1]
        assert last.startswith(f"{recipe}: error: {message}"), (name, err)
        assert "Traceback" not in err and (
            "DRY_RUN=1 checks the inputs without GPUs" in last or name == "rl, a cluster"
        )
    assert not (tmp_path / "logs").exists() and not (tmp_path / "eval").exists()  # no server was started
    assert not (tmp_path / "checkpoints").exists()  # nor a training run
