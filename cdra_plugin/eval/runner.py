"""Running many model calls for ``cdra eval``: the shared client built from options, and a bounded worker pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from cdra_plugin.llm import LLMClient, split_urls

T = TypeVar("T")


def make_client(backend: str | Sequence[str], model: str, option: str, **options) -> LLMClient:
    """``LLMClient`` for ``backend`` (comma-separated URLs or a list); ``options`` are the client's keywords."""
    urls = split_urls(backend, option) if isinstance(backend, str) else list(backend)
    return LLMClient(urls, model, **options)


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
