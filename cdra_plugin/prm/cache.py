"""Bounded LRU cache of scoring results by content hash, with shared in-flight computations.

The key hashes everything the result depends on (prompt, response, label, PRM template, k, model, sampling), so a
(prompt, response) pair is scored once within a rollout however often it is asked for (OpenRLHF retries a request
that timed out; several samples of a group can coincide). Concurrent identical requests wait on one computation,
which runs as its own task so a caller that disconnects does not cancel it for the others. Only complete results
(every step scored) are stored: a failed one is recomputed next time, after the backend may have recovered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any


def content_key(**parts: Any) -> str:
    """SHA-256 of the canonical JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    def __init__(self, max_entries: int, metrics=None):
        if max_entries < 0:
            raise ValueError(f"--cache-size must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self.metrics = metrics
        self._done: OrderedDict[str, Any] = OrderedDict()
        self._pending: dict[str, asyncio.Task] = {}

    def __len__(self) -> int:
        return len(self._done)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache.labels(result).inc()

    def peek(self, key: str) -> Any | None:
        """The cached value for ``key`` or None; never computes (trace look-ups must not score again)."""
        return self._done.get(key)

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[Any]], keep: Callable[[Any], bool] = lambda r: True
    ) -> Any:
        """The cached value for ``key``, else the running computation's, else ``compute()``'s (stored if ``keep``)."""
        if key in self._done:
            self._done.move_to_end(key)
            self._count("hit")
            return self._done[key]
        task = self._pending.get(key)
        if task is not None:
            self._count("shared")
        else:
            self._count("miss")
            task = asyncio.ensure_future(compute())
            self._pending[key] = task
            task.add_done_callback(lambda t: self._finish(key, t, keep))
        return await asyncio.shield(task)

    def _finish(self, key: str, task: asyncio.Task, keep: Callable[[Any], bool]) -> None:
        self._pending.pop(key, None)
        if task.cancelled() or task.exception() is not None or self.max_entries == 0 or not keep(task.result()):
            return
        self._done[key] = task.result()
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)
