"""Helpers of the LLM client tests (tests/test_llm_*.py): unreachable URLs, a backend's state, waiting for a probe."""

import asyncio
import socket
import time


def dead_url() -> str:
    """A loopback URL where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def state_of(client, url) -> dict:
    """``client.backend_states()``'s entry for the backend at ``url``."""
    return next(s for s in client.backend_states() if s["backend"] == url)


async def until(predicate, timeout: float = 5.0) -> None:
    """Wait (polling) until ``predicate()`` holds: the client's probes run beside the calls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
