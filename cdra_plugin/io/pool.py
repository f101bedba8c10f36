"""A bounded pool of asyncio workers over a list: how ``cdra prm score``, ``cdra eval`` and ``cdra build`` run many
independent jobs (a record, a response, a scenario) with at most N in flight.

    await for_each(records, score_one, parallel=64)

Each worker takes the next job from one shared iterator, so a job starts as soon as a worker is free and none runs
twice. The first error (or a cancellation: Ctrl-C under ``asyncio.run``) cancels the other workers, waits until they
have stopped, then propagates: a caller's ``with`` block around the pool (an open output file) outlives every job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def for_each(items: Sequence[T], fn: Callable[[T], Awaitable[None]], parallel: int) -> None:
    """``await fn(item)`` for every item, ``parallel`` at a time; the first error cancels the rest and is raised."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:  # the shared iterator hands each item to one worker
            await fn(item)

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(parallel, len(items))))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
