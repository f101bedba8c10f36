"""One computation per key at a time, in front of a store of finished results: what the PRM gateway's result cache
(in memory, an LRU bounded in bytes: ``cdra_plugin.prm.cache``) and the judge's answer cache (a JSONL file beside
its output: ``cdra_plugin.eval.judge``) share.

    flights = SingleFlight(store)                        # store.lookup(key) -> value | None; store.save(key, value)
    value = await flights.get(key, compute, keep=ok)     # the stored value, else the running computation's, else
                                                         # compute()'s, stored when keep(value)
    await flights.aclose()                               # cancel what is still running (before closing the store)

Concurrent callers asking for one key wait on one computation. It runs as its own task, so a caller that is
cancelled (a client that disconnected, a request that OpenRLHF will retry) cancels neither the others nor the work a
retry will find; a failure reaches every waiter and is not stored, so the next call computes again. ``counts`` tells
``hit`` (stored), ``shared`` (joined a running computation) and ``miss`` (computed); ``observe(kind)`` is called
with each, for metrics.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Store(Protocol):
    def lookup(self, key: str) -> Any | None: ...

    def save(self, key: str, value: Any) -> None: ...


class SingleFlight:
    """``get`` computes each missing key once however many callers ask for it at the same time."""

    def __init__(self, store: Store, observe: Callable[[str], None] | None = None):
        self.store = store
        self.observe = observe
        self.counts: Counter = Counter()
        self._pending: dict[str, asyncio.Future] = {}

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1
        if self.observe is not None:
            self.observe(kind)

    async def get(
        self,
        key: str,
        compute: Callable[[], Awaitable[Any]],
        keep: Callable[[Any], bool] = lambda value: True,
        joinable: bool = True,
    ) -> Any:
        """``joinable=False``: a computation nobody else will ask for while it runs (it still joins one running) runs
        in the caller's own task, without the task and shield that sharing costs (tens of microseconds)."""
        value = self.store.lookup(key)
        if value is not None:
            self._count("hit")
            return value
        task = self._pending.get(key)
        if task is not None:
            self._count("shared")
        elif not joinable:
            self._count("miss")
            value = await compute()
            if keep(value):
                self.store.save(key, value)
            return value
        else:
            self._count("miss")
            task = asyncio.ensure_future(compute())
            self._pending[key] = task
            task.add_done_callback(lambda done: self._finish(key, done, keep))
        return await asyncio.shield(task)

    def _finish(self, key: str, task: asyncio.Future, keep: Callable[[Any], bool]) -> None:
        self._pending.pop(key, None)
        if not task.cancelled() and task.exception() is None and keep(task.result()):
            self.store.save(key, task.result())

    async def aclose(self) -> None:
        """Cancel the computations still running and wait for them (nothing reaches the store after this)."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
