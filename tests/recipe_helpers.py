"""Helpers of the RL recipe tests (train_cdpa.sh, train_grpo_baseline.sh, train_cdpa_trl.sh): the real gateway app
over the scripted PRM on a loopback port, and a prompts file as `cdra data prepare` writes it."""

import contextlib
import json

from cdra_plugin.prm.config import GatewayConfig
from cdra_plugin.prm.gateway import Gateway
from cdra_plugin.prm.server import create_app
from cdra_plugin.stub import BackgroundServer, ScriptedLLM, prm_step_judge


@contextlib.contextmanager
def gateway(backend=None, **options):
    """The real gateway app over the scripted PRM (or over ``backend``, e.g. a port nothing answers on), with the
    ``GatewayConfig`` ``options``; yields its /get_reward URL."""
    with contextlib.ExitStack() as stack:
        url = backend or stack.enter_context(ScriptedLLM(prm_step_judge(), model="pers-genprm")).base_url
        config = GatewayConfig(backend=url, model="pers-genprm", **options)
        server = stack.enter_context(BackgroundServer(create_app(Gateway(config))))
        yield f"{server.url}/get_reward"


def write_prompts(path, label: str, rows: int = 64, question: str = "q"):
    """``rows`` RL prompt rows (both recipes' default batch is 32 prompts per step)."""
    row = {"input": [{"role": "user", "content": question}], "label": label}
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(rows)))
    return path
