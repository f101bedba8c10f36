"""Helpers of the PRM gateway tests: the real gateway (built from a `GatewayConfig`) on a loopback port."""

import contextlib
import json

import httpx

from cdra_plugin.prm.config import GatewayConfig
from cdra_plugin.prm.gateway import Gateway
from cdra_plugin.prm.server import create_app
from cdra_plugin.stub import BackgroundServer

FAST = {"timeout": 0.5, "retries": 2, "backoff": 0.001, "backoff_max": 0.005}
P, Q = "I avoid crowds.", "Where should I travel in May?"
LABEL = json.dumps({"preference": P, "question": Q, "id": "s1", "topic": "travel"})
PROMPT = "<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n"


def gateway_for(llm_urls, *, width=4, client=None, model="scripted-prm", **options):
    """The gateway over ``llm_urls``: ``options`` are ``GatewayConfig`` fields, ``client`` LLM client options over
    FAST (a scripted PRM answers at once: short timeouts, retries without backoff)."""
    client_options = {**FAST, **(client or {})}
    return Gateway(GatewayConfig(backend=list(llm_urls), model=model, max_steps=width, client_options=client_options,
                                 **options))  # fmt: skip


@contextlib.contextmanager
def serving(llm_urls, *, auth_token=None, **options):
    """The gateway ``gateway_for`` builds, served: yields its URL and the gateway."""
    gateway = gateway_for(llm_urls, **options)
    with BackgroundServer(create_app(gateway, auth_token=auth_token)) as server:
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
