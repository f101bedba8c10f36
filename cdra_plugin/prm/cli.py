"""``cdra prm serve`` (the gateway) and ``cdra prm score`` (offline scoring of a JSONL file).

    cdra prm serve --backend http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1 --model pers-genprm
    cdra prm serve --backend https://api.openai.com/v1 --model gpt-4.1 --api-key-env OPENAI_API_KEY
    cdra prm score --backend http://127.0.0.1:8000/v1 --model pers-genprm --input r.jsonl --output scored.jsonl

The gateway speaks OpenRLHF's remote reward-model protocol: train with --reward.remote_url http://HOST:PORT/get_reward.
Its reward is the length-weighted mean of the step scores by default, which splitting a response into more steps
cannot inflate; --reward-aggregation sum gives the paper's R_dense = sum of step scores (and rewards fragmenting).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from cdra_plugin.cdpa.prompts import DEFAULT_END_TOKENS
from cdra_plugin.llm.options import Endpoint
from cdra_plugin.prm import limits
from cdra_plugin.prm.reward import DEFAULT_REWARD_AGGREGATION, REWARD_AGGREGATIONS

# The serving stack (aiohttp, fastapi, uvicorn) is imported when a command runs, so `--help` is instant.

logger = logging.getLogger("cdra.prm")
HOST_TIMEOUT_S = 180  # OpenRLHF's aiohttp timeout for one remote RM request
PRM = Endpoint("--backend", "--model", "the PRM", names={"max_tokens": "--max-critique-tokens"})


def _scoring_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("PRM backend")
    PRM.add_endpoint(g, "; vLLM/SGLang replicas or a hosted API")
    PRM.add_options(g, ("api_key", "prompt_format", "concurrency", "timeout", "retries", "backoff", "backoff_max"),
                    timeout=45.0, retries=2)  # fmt: skip
    g = p.add_argument_group("step scoring (Pers-GenPRM, paper Sec. 2.3)")
    g.add_argument("--template", metavar="FILE", help="PRM prompt template overriding Fig. 15; fields {preference} "
                   "{question} {previous_steps} {current_step}")  # fmt: skip
    g.add_argument("--max-steps", type=int, default=32, help="steps per response; later ones merge into the last "
                   "(= the carrier width the trainer reads, default 32)")  # fmt: skip
    g.add_argument("--k", type=int, default=1, help="critiques sampled per step (Appendix D; default 1)")
    g.add_argument("--k-aggregation", choices=["mean", "median"], default="mean", help="how k scores combine")
    PRM.add_options(g, ("temperature", "top_p", "max_tokens"), temperature=None,
                    helps={"temperature": "sampling temperature (default 0 for k=1, else 1)",
                           "max_tokens": "length limit of one critique, in tokens"})  # fmt: skip
    g.add_argument("--end-tokens", default=",".join(DEFAULT_END_TOKENS),
                   help="comma-separated end-of-sequence texts removed from the end of a response")  # fmt: skip
    g.add_argument("--failure-policy", default="fail", metavar="drop|fail|score=X",
                   help="a sample with a step unscored after retries: fail = the sample fails (serve: HTTP 502 "
                   "naming it; score: the run stops) (default); drop = mark it invalid, honoured by cdra-train only; "
                   "score=X = give failed steps X")  # fmt: skip
    g.add_argument("--reward-aggregation", choices=REWARD_AGGREGATIONS, default=DEFAULT_REWARD_AGGREGATION,
                   help="the scalar reward from the step scores: length_mean = mean weighted by step length "
                   "(default; splitting steps cannot inflate it); mean; sum = the paper's R_dense, which grows with "
                   "the number of steps (use it only to reproduce the paper's GRPO (with PRM) row)")  # fmt: skip
    g.add_argument("--max-response-chars", type=int, default=limits.DEFAULT_MAX_RESPONSE_CHARS, metavar="N",
                   help="longest response scored, in characters (default %(default)s); longer ones are refused "
                   "(HTTP 413 / an input error)")  # fmt: skip
    g.add_argument(
        "--cache-mb",
        type=float,
        default=limits.DEFAULT_CACHE_MB,
        help="memory for cached results, MiB (LRU, default %(default)s; 0 = off)",
    )
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_parser(subparsers) -> None:
    prm = subparsers.add_parser("prm", help="Pers-GenPRM step-wise reward gateway and offline scoring")
    sub = prm.add_subparsers(dest="prm_command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the gateway (OpenRLHF --reward.remote_url .../get_reward)",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _scoring_options(serve)
    g = serve.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    g.add_argument("--auth-token-env", metavar="VAR", help="require 'Authorization: Bearer <token>' with the token "
                   "from this environment variable (basic auth with it as password is accepted too)")  # fmt: skip
    g.add_argument("--max-body-mb", type=float, default=limits.DEFAULT_MAX_BODY_MB,
                   help="request size limit in MiB (default %(default)s)")  # fmt: skip
    g.add_argument("--max-samples", type=int, default=limits.DEFAULT_MAX_SAMPLES, metavar="N",
                   help="samples per scoring request (default %(default)s; OpenRLHF sends 1)")  # fmt: skip
    g.add_argument("--header-timeout", type=float, default=limits.DEFAULT_HEADER_TIMEOUT_S, metavar="S",
                   help="seconds a client has to send a request's headers (default %(default)s)")  # fmt: skip
    g.add_argument("--body-timeout", type=float, default=limits.DEFAULT_BODY_TIMEOUT_S, metavar="S",
                   help="seconds a client has to send a request's body once its headers arrived "
                   "(default %(default)s)")  # fmt: skip
    serve.set_defaults(func=run_serve)

    score = sub.add_parser("score", help="score a JSONL file of responses step by step (resumable)",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _scoring_options(score)
    g = score.add_argument_group("files")
    g.add_argument("--input", type=Path, required=True, help="responses JSONL: {id, preference, question, response} "
                   "per line (or {id, label, response}, or OpenRLHF's {id, prompt, query, label})")  # fmt: skip
    g.add_argument("--output", type=Path, required=True, help="scored JSONL; records already there are skipped")
    g.add_argument("--parallel", type=int, default=64, help="responses scored at once (default 64)")
    g.add_argument("--retry-failed", action="store_true", help="score again the records of earlier runs whose "
                   "outcome was dropped or fallback (e.g. after a backend outage); by default every id in --output "
                   "counts as done")  # fmt: skip
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=run_score)


def parse_serve_args(argv: list[str]) -> argparse.Namespace:
    """``cdra prm serve ARGV``'s options, for a gateway run in-process (``build_gateway``, ``create_app``)."""
    parser = argparse.ArgumentParser(prog="cdra")
    add_parser(parser.add_subparsers())
    return parser.parse_args(["prm", "serve", *argv])


def build_gateway(args: argparse.Namespace):
    """The ``Gateway`` the options describe; ``ValueError`` naming the option otherwise."""
    from cdra_plugin.prm.gateway import Gateway
    from cdra_plugin.prm.metrics import Metrics
    from cdra_plugin.prm.policy import FailurePolicy
    from cdra_plugin.prm.scoring import StepScorer, load_template

    temperature = args.temperature if args.temperature is not None else (0.0 if args.k == 1 else 1.0)
    if args.k > 1 and temperature == 0:
        raise ValueError("--k > 1 with --temperature 0 samples k identical critiques; set --temperature > 0")
    for option, value in (("--max-response-chars", args.max_response_chars),
                          ("--max-samples", getattr(args, "max_samples", 1))):  # fmt: skip
        if value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    metrics = Metrics()
    client = PRM.client(args, temperature=temperature, metrics=metrics)
    scorer_kwargs = {"template": load_template(args.template)} if args.template else {}
    scorer = StepScorer(
        client,
        k=args.k,
        k_aggregation=args.k_aggregation,
        max_steps=args.max_steps,
        end_tokens=[t for t in args.end_tokens.split(",") if t],
        metrics=metrics,
        **scorer_kwargs,
    )
    return Gateway(
        scorer,
        policy=FailurePolicy.parse(args.failure_policy),
        reward_aggregation=args.reward_aggregation,
        cache_mb=args.cache_mb,
        max_samples=getattr(args, "max_samples", limits.DEFAULT_MAX_SAMPLES),  # a `serve` option only
        max_response_chars=args.max_response_chars,
        metrics=metrics,
    )


def _log_setup(args: argparse.Namespace, gateway) -> None:
    client = gateway.scorer.client
    logger.info(
        "PRM model %r on %s; format=%s k=%d temperature=%g max_steps=%d policy=%s reward=%s",
        client.model, [b.label for b in client.backends], client.prompt_format, gateway.scorer.k,
        client.sampling["temperature"], gateway.width, gateway.policy, gateway.reward_aggregation,
    )  # fmt: skip
    if gateway.policy.mode == "drop":
        logger.warning(
            "--failure-policy drop: a failed sample gets reward 0.0 with cdpa_failed=1. Only cdra-train (the cdpa "
            "estimator) excludes it from the update; plain OpenRLHF estimators would train on 0.0, so use "
            "--failure-policy fail or score=X with them."
        )
    worst = (args.retries + 1) * args.timeout + args.retries * args.backoff_max
    if worst > HOST_TIMEOUT_S:
        logger.warning(
            "a sample may take up to %.0f s ((retries+1)*timeout + retries*backoff_max) but OpenRLHF gives a reward "
            "request %d s: lower --timeout/--retries/--backoff-max", worst, HOST_TIMEOUT_S,
        )  # fmt: skip


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_serve(args: argparse.Namespace) -> int:
    from cdra_plugin.llm.client import api_key_from_env
    from cdra_plugin.prm.server import bind, create_app, serve

    _logging(args.log_level)
    try:
        gateway = build_gateway(args)
        token = api_key_from_env(args.auth_token_env, "--auth-token-env")
        for option, value in (("--max-body-mb", args.max_body_mb), ("--header-timeout", args.header_timeout),
                              ("--body-timeout", args.body_timeout)):  # fmt: skip
            if value <= 0:
                raise ValueError(f"{option} must be > 0, got {value}")
        sock = bind(args.host, args.port)  # before uvicorn starts: a port in use is one line, nothing else
    except (ValueError, OSError) as exc:
        print(f"cdra prm serve: error: {exc}", file=sys.stderr)
        return 2
    _log_setup(args, gateway)
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without --auth-token-env: anyone who reaches the port can use the PRM",
                       args.host)  # fmt: skip
    app = create_app(
        gateway, auth_token=token, max_body_bytes=int(args.max_body_mb * (1 << 20)), body_timeout=args.body_timeout
    )
    logger.info("reward URL for OpenRLHF: --reward.remote_url http://%s:%d/get_reward", args.host, args.port)
    serve(app, sock, header_timeout=args.header_timeout, log_level=args.log_level,
          access_log=args.log_level == "debug")  # fmt: skip
    return 0


def run_score(args: argparse.Namespace) -> int:
    from cdra_plugin.prm.offline import OfflineRun
    from cdra_plugin.prm.policy import SampleFailed

    _logging(args.log_level)
    run = None
    try:
        if not args.input.is_file():
            raise ValueError(f"--input {args.input}: no such file")
        run = OfflineRun(build_gateway(args), args.input, args.output, parallel=args.parallel,
                         retry_failed=args.retry_failed, progress=not args.no_progress)  # fmt: skip
        asyncio.run(run.score())
    except (ValueError, OSError) as exc:
        print(f"cdra prm score: error: {exc}", file=sys.stderr)
        return 2
    except SampleFailed as exc:
        print(f"cdra prm score: stopped: {exc}; {run.summary()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cdra prm score: interrupted; {run.summary() if run else 'nothing scored'}", file=sys.stderr)
        return 130
    print(f"cdra prm score: {run.summary()}")
    return 0
