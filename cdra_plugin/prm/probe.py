"""Can a running gateway (``cdra prm serve``) score this training run? Its ``GET /health``, read before training.

    probe("http://127.0.0.1:5000/get_reward", token)     # the /health body, or GatewayUnusable naming why not
    python -m cdra_plugin.prm.probe URL --option REWARD_URL [--token-env VAR] [--aggregation sum] [--no-drop WHY]

The TRL entry point (``python -m cdra_plugin.trl.train``) probes before it loads the model, and the training recipes
(``recipes/lib/gateway.sh``, with the last two options) before they launch: a gateway that does not answer, answers
401, has no PRM backend up, or serves another reward than the run needs is one line instead of a failure minutes
later. The script prints that line (or a summary of a usable gateway) and exits with 0 (usable), 1 (it answered
but cannot serve this run) or 3 (nothing answered). Only the standard library is used, so the probe costs no
import time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit


class GatewayUnusable(Exception):
    """The gateway cannot score the run; ``answered`` is False when nothing answered at the URL."""

    def __init__(self, message: str, answered: bool = True):
        super().__init__(message)
        self.answered = answered


def probe(url: str, token: str | None = None, *, option: str = "--reward_url", aggregation: str | None = None,
          no_drop: str | None = None, timeout: float = 10.0) -> dict:  # fmt: skip
    """The ``/health`` body of the gateway whose ``/get_reward`` is ``url``; ``GatewayUnusable`` when it is down,
    refuses ``token``, serves another ``aggregation`` than the one given, or runs ``--failure-policy drop`` while
    ``no_drop`` (why this run cannot leave a dropped sample out) is given. ``option`` names the URL in messages."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayUnusable(f"{option} {url!r}: expected the gateway's http://HOST:PORT/get_reward", answered=False)
    health = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.removesuffix("/get_reward")
                         + "/health", "", ""))  # fmt: skip
    request = urllib.request.Request(health)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    elif parts.password:  # http://user:TOKEN@host: basic auth, as OpenRLHF's client sends it
        basic = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
        request.add_header("Authorization", "Basic " + basic)
    code = 200
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as exc:  # it answered: 503 when its backends are down, 401 without the token
        code, raw = exc.code, exc.read()
    except OSError as exc:  # nothing answered; URLError's reason is the connection's OSError, or a message
        reason = getattr(exc, "reason", exc)
        reason = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise GatewayUnusable(f"GET {health}: {reason}; start it with recipes/serve_prm.sh, or set {option}",
                              answered=False) from None  # fmt: skip
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or "status" not in body:  # a 401's {"detail": ...}, or not a gateway at all
        detail = f" ({body['detail']})" if isinstance(body, dict) and body.get("detail") else ""
        what = "" if code != 200 else ": not the /health of `cdra prm serve`"
        raise GatewayUnusable(f"GET {health}: HTTP {code}{detail}{what}")
    if body.get("status") != "ok":
        raise GatewayUnusable(f"status {body.get('status')}, backends {body.get('backends')}; check its PRM backends "
                              "(its log)")  # fmt: skip
    if no_drop and body.get("failure_policy") == "drop":
        raise GatewayUnusable(f"it runs --failure-policy drop, which {no_drop}: restart it with FAILURE_POLICY=fail")
    served = body.get("reward_aggregation")
    if aggregation and served != aggregation:
        paper = " (R_dense = the sum of the step scores, the paper's GRPO (with PRM) reward)"
        why = paper if aggregation == "sum" else ""
        instead = f", or set REWARD_AGGREGATION={served} to train on its reward" if served else ""
        raise GatewayUnusable(
            f"its reward aggregation is {served or 'not reported'}, not REWARD_AGGREGATION={aggregation}{why}: "
            f"restart it with REWARD_AGGREGATION={aggregation} bash recipes/serve_prm.sh{instead}"
        )
    return body


def summary(body: dict) -> str:
    return (f"ok, model {body.get('model')}, failure policy {body.get('failure_policy')}, reward aggregation "
            f"{body.get('reward_aggregation')}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdra_plugin.prm.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("url", help="the gateway's http://HOST:PORT/get_reward")
    parser.add_argument("--option", default="--reward_url", help="what names the URL, for the messages")
    parser.add_argument("--token-env", help="environment variable holding the gateway's token")
    parser.add_argument("--aggregation", help="the reward aggregation the run needs (empty: any)")
    parser.add_argument("--no-drop", metavar="WHY", help="refuse --failure-policy drop, saying why")
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env) if args.token_env else None
    try:
        body = probe(args.url, token, option=args.option, aggregation=args.aggregation, no_drop=args.no_drop)
    except GatewayUnusable as exc:
        print(exc)
        return 1 if exc.answered else 3
    print(summary(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
