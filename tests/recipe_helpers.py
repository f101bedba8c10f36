"""Helpers of the RL recipe tests (train_cdpa.sh, train_grpo_baseline.sh, train_cdpa_trl.sh): the real gateway app
over the scripted PRM on a loopback port, and a prompts file as `cdra data prepare` writes it."""

import contextlib
import json

from cdra_plugin.cli import build_parser
from cdra_plugin.prm.cli import build_gateway
from cdra_plugin.prm.server import create_app
from cdra_plugin.stub import BackgroundServer, ScriptedLLM, prm_step_judge


@contextlib.contextmanager
def gateway(*argv, backend=None):
    """The real gateway app over the scripted PRM (or over ``backend``, e.g. a port nothing answers on); yields its
    /get_reward URL."""
    with contextlib.ExitStack() as stack:
        url = backend or stack.enter_context(ScriptedLLM(prm_step_judge(), model="pers-genprm")).base_url
        args = build_parser().parse_args(["prm", "serve", "--backend", url, "--model", "pers-genprm", *argv])
        server = stack.enter_context(BackgroundServer(create_app(build_gateway(args))))
        yield f"{server.url}/get_reward"


def write_prompts(path, label: str, rows: int = 64, question: str = "q"):
    """``rows`` RL prompt rows (both recipes' default batch is 32 prompts per step)."""
    row = {"input": [{"role": "user", "content": question}], "label": label}
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(rows)))
    return path
