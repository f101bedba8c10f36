"""``cdra prm serve`` (the gateway) and ``cdra prm score`` (offline scoring of a JSONL file).

    cdra prm serve --backend http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1 --model pers-genprm
    cdra prm serve --backend https://api.openai.com/v1 --model gpt-4.1 --api-key-env OPENAI_API_KEY
    cdra prm score --backend http://127.0.0.1:8000/v1 --model pers-genprm --input r.jsonl --output scored.jsonl

The gateway speaks OpenRLHF's remote reward-model protocol: train with --reward.remote_url http://HOST:PORT/get_reward.
Its reward is the lowest step score by default (min), which splitting, padding, repeating or reordering steps cannot
raise; --reward-aggregation sum gives the paper's R_dense = sum of step scores (and rewards fragmenting). Every
option is a field of cdra_plugin.prm.config.GatewayConfig, which builds the same gateway from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from cdra_plugin import Failed, add_run_options
from cdra_plugin.prm.config import GatewayConfig

# The serving stack (aiohttp, fastapi, uvicorn) is imported when a command runs, so `--help` is instant.

logger = logging.getLogger("cdra.prm")
HOST_TIMEOUT_S = 180  # OpenRLHF's aiohttp timeout for one remote RM request


def add_parser(subparsers) -> None:
    prm = subparsers.add_parser(
        "prm",
        help="Pers-GenPRM step-wise reward gateway and offline scoring",
        description="Pers-GenPRM (paper Section 2.3) behind OpenRLHF's remote reward-model protocol: `serve` runs the "
        "step-wise gateway that training calls (--reward.remote_url http://HOST:PORT/get_reward); `score` scores a "
        "JSONL file of responses offline, through the same gateway code.",
    )
    sub = prm.add_subparsers(dest="prm_command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the gateway (OpenRLHF --reward.remote_url .../get_reward)",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    GatewayConfig.add_arguments(serve, serve=True)
    add_run_options(serve, log_level="info", progress=False)  # a server: no progress bar
    serve.set_defaults(func=run_serve)

    score = sub.add_parser("score", help="score a JSONL file of responses step by step (resumable)",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    GatewayConfig.add_arguments(score, serve=False)
    add_run_options(score, log_level="info")
    g = score.add_argument_group("files")
    g.add_argument("--input", type=Path, required=True, help="responses JSONL: {id, preference, question, response} "
                   "per line (or {id, label, response}, or OpenRLHF's {id, prompt, query, label})")  # fmt: skip
    g.add_argument("--output", type=Path, required=True, help="scored JSONL; records already there are skipped; "
                   "never the --input file")  # fmt: skip
    g.add_argument("--parallel", type=int, default=64, help="responses scored at once (default 64)")
    g.add_argument("--retry-failed", action="store_true", help="score again the records of earlier runs whose "
                   "outcome was dropped or fallback (e.g. after a backend outage); by default every id in --output "
                   "counts as done")  # fmt: skip
    score.set_defaults(func=run_score)


def _log_setup(gateway) -> None:
    client, config = gateway.scorer.client, gateway.config
    logger.info(
        "PRM model %r on %s; format=%s k=%d temperature=%g max_steps=%d policy=%s reward=%s degenerate_guard=%s",
        client.model, [b.label for b in client.backends], client.prompt_format, config.k,
        client.sampling["temperature"], config.max_steps, config.policy, config.reward_aggregation,
        "on" if config.degenerate_guard else "off",
    )  # fmt: skip
    if config.policy.mode == "drop":
        logger.warning(
            "--failure-policy drop: a failed sample gets reward 0.0 with cdpa_failed=1. Only cdra-train (the cdpa "
            "estimator) excludes it from the update; plain OpenRLHF estimators would train on 0.0, so use "
            "--failure-policy fail or score=X with them."
        )
    worst = (client.retries + 1) * client.timeout + client.retries * client.backoff_max
    if worst > HOST_TIMEOUT_S:
        logger.warning(
            "a sample may take up to %.0f s ((retries+1)*timeout + retries*backoff_max) but OpenRLHF gives a reward "
            "request %d s: lower --timeout/--retries/--backoff-max", worst, HOST_TIMEOUT_S,
        )  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    from cdra_plugin.llm.options import api_key_from_env
    from cdra_plugin.prm.gateway import Gateway
    from cdra_plugin.prm.server import bind, connection_cap, create_app, serve

    gateway = Gateway(GatewayConfig.from_namespace(args))
    token = api_key_from_env(gateway.config.auth_token_env, "--auth-token-env")
    cap = connection_cap(gateway)
    try:
        sock = bind(gateway.config.host, gateway.config.port)  # before uvicorn starts: a port in use is one line
    except OSError as exc:  # the --host/--port given cannot be used
        raise ValueError(str(exc)) from None
    _log_setup(gateway)
    host, port = gateway.config.host, gateway.config.port
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without --auth-token-env: anyone who reaches the port can use the PRM", host)
    logger.info("reward URL for OpenRLHF: --reward.remote_url http://%s:%d/get_reward", host, port)
    serve(create_app(gateway, auth_token=token), sock, gateway, max_connections=cap, log_level=args.log_level)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from cdra_plugin.prm.gateway import Gateway
    from cdra_plugin.prm.offline import OfflineRun
    from cdra_plugin.prm.reward import SampleFailed

    config = GatewayConfig.from_namespace(args)
    run = OfflineRun(Gateway(config), args.input, args.output, parallel=args.parallel,
                     retry_failed=args.retry_failed, progress=not args.no_progress)  # fmt: skip
    try:
        asyncio.run(run.score())
    except SampleFailed as exc:
        raise Failed(f"stopped: {exc}; {run.summary()}") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(run.summary()) from None
    print(f"cdra prm score: {run.summary()}")
    return 0
