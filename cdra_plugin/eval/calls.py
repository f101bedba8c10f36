"""How ``cdra eval generate`` and ``cdra eval judge`` treat their model calls: a check before the first call, a stop at
the first failure that no retry can fix.

- ``preflight``: every backend is probed (``LLMClient.health``: ``GET /v1/models``) before anything is asked, as
  ``cdra build`` does; a server that does not answer, or does not serve the model name given, is one line naming
  the URL (and the names it serves): nothing is paid for, nothing is written. ``--skip-health-check`` skips it.
- ``Stopped``: a call that failed with a kind in ``FATAL_KINDS`` (an unknown model, a bad request, a refused key:
  the server's answer would be the same for every other call) stops the run at once with the server's own message;
  calls in flight are cancelled, finished rows are kept, and the rerun resumes after them.

Transient failures (timeouts, 5xx, an unusable answer) are retried by the client and then counted by kind; the
commands exit with status 1 while any requested response or verdict is missing.
"""

from __future__ import annotations

from cdra_plugin.llm.client import FATAL_KINDS, LLMCallError, LLMClient


class Stopped(Exception):
    """The run stopped at a failure no retry fixes; ``error`` is the client's, with the server's message."""

    def __init__(self, error: LLMCallError, counts: dict | None = None):
        super().__init__(str(error))
        self.error = error
        self.counts = counts or {}


def is_fatal(error: LLMCallError) -> bool:
    return error.kind in FATAL_KINDS


async def preflight(client: LLMClient, url_option: str, model_option: str) -> None:
    """``ValueError`` naming each backend that is unreachable or does not serve ``client.model``."""
    bad = [entry for entry in await client.health() if not entry["ok"]]
    if bad:
        detail = "; ".join(f"{entry['backend']}: {entry.get('error', 'not ok')}" for entry in bad)
        raise ValueError(f"{url_option} {detail}: check {url_option} and {model_option}, or pass --skip-health-check")
