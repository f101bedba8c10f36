"""LRU cache of scoring results by content hash, bounded in bytes, with shared in-flight computations.

The key hashes everything the result depends on (prompt, response, label, PRM template, k, model, sampling), so a
(prompt, response) pair is scored once within a rollout however often it is asked for (OpenRLHF retries a request
that timed out; several samples of a group can coincide). Concurrent identical requests wait on one computation,
which runs as its own task so a caller that disconnects does not cancel it for the others. Only complete results
(every step scored) are stored: a failed one is recomputed next time, after the backend may have recovered.

The bound is on bytes (``--cache-mb``; each result's ``nbytes()`` estimate, dominated by its step texts and
critiques), not on entries: a few rounds of long responses would otherwise grow the gateway's memory without limit.
The least recently used results go first; a result larger than the whole cache is not stored.
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
    """``max_bytes`` (0 = off) of results, each sized by ``size_of(result)``."""

    def __init__(self, max_bytes: int, size_of: Callable[[Any], int], metrics=None):
        if max_bytes < 0:
            raise ValueError(f"--cache-mb must be >= 0, got {max_bytes / (1 << 20):g}")
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.metrics = metrics
        self.nbytes = 0
        self._done: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._pending: dict[str, asyncio.Task] = {}

    def __len__(self) -> int:
        return len(self._done)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache.labels(result).inc()

    def peek(self, key: str) -> Any | None:
        """The cached value for ``key`` or None; never computes (trace look-ups must not score again)."""
        entry = self._done.get(key)
        return None if entry is None else entry[0]

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[Any]], keep: Callable[[Any], bool] = lambda r: True
    ) -> Any:
        """The cached value for ``key``, else the running computation's, else ``compute()``'s (stored if ``keep``)."""
        if key in self._done:
            self._done.move_to_end(key)
            self._count("hit")
            return self._done[key][0]
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
        if task.cancelled() or task.exception() is not None or not keep(task.result()):
            return
        size = self.size_of(task.result())
        if size > self.max_bytes:
            return
        self._done[key] = (task.result(), size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, evicted) = self._done.popitem(last=False)
            self.nbytes -= evicted
