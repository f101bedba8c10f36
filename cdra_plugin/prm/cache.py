"""LRU cache of scoring results by content hash, bounded in bytes, with shared in-flight computations.

The key hashes everything the result depends on (prompt, response, label, PRM template, k, model, sampling), so a
(prompt, response) pair is scored once within a rollout however often it is asked for (OpenRLHF retries a request
that timed out; several samples of a group can coincide). Concurrent identical requests wait on one computation,
which runs as its own task so a caller that disconnects does not cancel it for the others
(``cdra_plugin.io.singleflight``, shared with the judge's answer cache). Only complete results (every step scored)
are stored: a failed one is recomputed next time, after the backend may have recovered.

The bound is on bytes (``--cache-mb``; each result's ``nbytes()`` estimate, dominated by its step texts and
critiques), not on entries: a few rounds of long responses would otherwise grow the gateway's memory without limit.
The least recently used results go first; a result larger than the whole cache is not stored.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from cdra_plugin.io.singleflight import SingleFlight


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
        self.nbytes = 0
        self._done: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        observe = None if metrics is None else (lambda kind: metrics.cache.labels(kind).inc())
        self._flights = SingleFlight(self, observe)

    def __len__(self) -> int:
        return len(self._done)

    def peek(self, key: str) -> Any | None:
        """The cached value for ``key`` or None; never computes (trace look-ups must not score again)."""
        entry = self._done.get(key)
        return None if entry is None else entry[0]

    async def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Awaitable[Any]],
        keep: Callable[[Any], bool] = lambda r: True,
        joinable: bool = True,
    ) -> Any:
        """The cached value for ``key``, else the running computation's, else ``compute()``'s (stored if ``keep``);
        ``joinable``: see ``cdra_plugin.io.singleflight.SingleFlight.get``."""
        return await self._flights.get(key, compute, keep, joinable)

    # the store of SingleFlight
    def lookup(self, key: str) -> Any | None:
        if key in self._done:
            self._done.move_to_end(key)
        return self.peek(key)

    def save(self, key: str, result: Any) -> None:
        size = self.size_of(result)
        if size > self.max_bytes:
            return
        self._done[key] = (result, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, evicted) = self._done.popitem(last=False)
            self.nbytes -= evicted
