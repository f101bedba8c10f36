"""Helpers of the PRM gateway tests: the real gateway (built from `cdra prm serve` options) on a loopback port."""

import contextlib
import json

import httpx

from cdra_plugin.cli import build_parser
from cdra_plugin.prm.cli import build_gateway
from cdra_plugin.prm.server import create_app
from cdra_plugin.stub import BackgroundServer

FAST = ["--timeout", "0.5", "--retries", "2", "--backoff", "0.001", "--backoff-max", "0.005"]
P, Q = "I avoid crowds.", "Where should I travel in May?"
LABEL = json.dumps({"preference": P, "question": Q, "id": "s1", "topic": "travel"})
PROMPT = "<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n"


def gateway_for(llm_urls, *argv, width=4):
    args = build_parser().parse_args(
        ["prm", "serve", "--backend", ",".join(llm_urls), "--model", "scripted-prm", "--max-steps", str(width)]
        + FAST
        + list(argv)
    )
    return build_gateway(args)


@contextlib.contextmanager
def serving(llm_urls, *argv, width=4, max_body_bytes=1 << 20, **app_options):
    """The gateway the options describe, served; ``app_options`` go to ``create_app``."""
    gateway = gateway_for(llm_urls, *argv, width=width)
    app = create_app(gateway, max_body_bytes=max_body_bytes, **app_options)
    with BackgroundServer(app) as server:
        yield server.url, gateway


def reward_body(*responses, label=LABEL):
    return {
        "query": [PROMPT + r for r in responses],
        "prompts": [PROMPT] * len(responses),
        "labels": [label] * len(responses),
    }


def post(url, path, body, **kw):
    return httpx.post(url + path, json=body, timeout=10, **kw)


def rewards(url, *responses):
    """The gateway's reward for each response (one /get_reward request)."""
    answer = post(url, "/get_reward", reward_body(*responses))
    assert answer.status_code == 200, answer.text
    return answer.json()["rewards"]
