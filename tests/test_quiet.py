"""No third-party noise from the entry points (cdra_plugin.quiet_third_party), the plugin's own warnings kept:
`cdra-train --help`, `python -m cdra_plugin.trl.train` (a real step through the gateway), `scripts/learn_trl.py`;
`cdra demo` in tests/test_demo.py. The TRL entry point also stops in one line, before TRL is even imported, when its
gateway cannot score."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from noise import noise
from recipe_helpers import gateway, write_prompts

from cdra_plugin import THIRD_PARTY_NOTICES, quiet_third_party
from cdra_plugin.prm.config import GatewayConfig
from cdra_plugin.prm.gateway import Gateway
from cdra_plugin.prm.probe import GatewayUnusable, probe
from cdra_plugin.prm.server import create_app
from cdra_plugin.stub import BackgroundServer, ScriptedLLM, prm_step_judge
from cdra_plugin.stub.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
trl = pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is an optional extra")
LABEL = json.dumps({"preference": "I avoid crowds.", "question": "Where should I travel in May?"})


def python(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, timeout=timeout)


def test_only_the_listed_notices_are_dropped_and_the_plugins_own_warnings_show():
    quiet_third_party()
    for name, start in THIRD_PARTY_NOTICES:
        logger = logging.getLogger(name)
        assert not logger.filter(logging.makeLogRecord({"name": name, "msg": start + " (the rest of it)"}))
        assert logger.filter(logging.makeLogRecord({"name": name, "msg": "anything else " + start}))
    assert len(logging.getLogger("DeepSpeed").filters) == len([n for n, _ in THIRD_PARTY_NOTICES if n == "DeepSpeed"])
    code = (
        "import warnings; from cdra_plugin import quiet_third_party; quiet_third_party(); import torch; "
        "from cdra_plugin.cdpa.aggregation import check_aggregation; check_aggregation('token_mean', '--x')"
    )
    out = python("-c", code)
    assert out.returncode == 0 and noise(out.stderr) == [], out.stderr
    assert "FutureWarning: --x token_mean is now called weighted_mean" in out.stderr  # the plugin's own warning


def test_cdra_train_help_is_quiet():
    out = python("-m", "cdra_plugin.train", "--help")
    assert out.returncode == 0 and "--cdpa.mode" in out.stdout and "--algo.advantage.estimator" in out.stdout
    assert out.stderr == "" and noise(out.stdout) == [], out.stderr  # DeepSpeed's logger writes to stdout
    assert "``" not in out.stdout


@trl
def test_the_trl_entry_point_is_quiet_through_a_real_step(tmp_path, tiny_model_path):
    prompts = write_prompts(tmp_path / "rl_prompts.jsonl", LABEL, rows=8, question="Where should I travel in May?")
    with ScriptedLLM(prm_step_judge(default=0.5), model="prm") as llm:
        config = GatewayConfig(backend=llm.base_url, model="prm", failure_policy="drop", degenerate_guard=False)
        with BackgroundServer(create_app(Gateway(config))) as server:
            out = python("-m", "cdra_plugin.trl.train", "--model_name_or_path", str(tiny_model_path), "--prompts",
                         str(prompts), "--reward_url", f"{server.url}/get_reward", "--output_dir", str(tmp_path / "o"),
                         "--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size", "4",
                         "--max_completion_length", "8", "--use_cpu", "true", "--report_to", "none",
                         "--save_strategy", "no", "--disable_tqdm", "true")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert noise(out.stdout + out.stderr) == [] and (tmp_path / "o" / "config.json").is_file()


def test_the_trl_entry_point_stops_in_one_line_before_loading_when_its_gateway_cannot_score(tmp_path):
    argv = ["-m", "cdra_plugin.trl.train", "--model_name_or_path", str(tmp_path / "no-model"), "--prompts",
            str(tmp_path / "none.jsonl"), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    nobody = f"http://127.0.0.1:{free_port()}/get_reward"
    started = time.monotonic()
    out = python(*argv, "--reward_url", nobody)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        f"python -m cdra_plugin.trl.train: error: the PRM gateway at {nobody} is not usable: GET "
        f"{nobody.removesuffix('/get_reward')}/health: Connection refused; start it with recipes/serve_prm.sh, or "
        "set --reward_url\n"
    )
    assert time.monotonic() - started < 10 and not (tmp_path / "out").exists()  # TRL itself imports in about 10 s
    with gateway(backend=f"http://127.0.0.1:{free_port()}/v1") as url:  # it answers, but its PRM is down
        out = python(*argv, f"--reward-url={url}")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is not usable: status down" in out.stderr
    with ScriptedLLM(prm_step_judge(), model="pers-genprm") as llm:  # a gateway that wants a token
        app = create_app(Gateway(GatewayConfig(backend=llm.base_url, model="pers-genprm")), auth_token="s3cret")
        with BackgroundServer(app) as server:
            url = server.url + "/get_reward"
            out = python(*argv, "--reward_url", url)
            assert out.returncode == 2 and f"{server.url}/health: HTTP 401" in out.stderr, out.stderr
            out = python(*argv, "--reward_url", url, "--auth_token_env", "CDRA_TEST_UNSET")
            assert out.returncode == 2 and "environment variable CDRA_TEST_UNSET is not set" in out.stderr


@trl
def test_learn_trl_is_quiet():
    out = python(str(ROOT / "scripts" / "learn_trl.py"), "--mode", "cdpa", "--steps", "5")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["steps"] == 5
    assert noise(out.stdout + out.stderr) == [], noise(out.stdout + out.stderr)


def test_the_probe_says_what_answered_when_it_is_not_a_gateway():
    with ScriptedLLM(prm_step_judge(), model="m") as llm:  # an OpenAI-compatible server, not the gateway
        with pytest.raises(GatewayUnusable, match=r"/v1/health: HTTP 404") as caught:
            probe(llm.base_url + "/get_reward")
    assert caught.value.answered
    with pytest.raises(GatewayUnusable, match=r"--reward_url 'localhost:5000/get_reward': expected the gateway's"):
        probe("localhost:5000/get_reward")
