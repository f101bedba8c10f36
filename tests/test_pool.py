"""The bounded worker pool (``cdra_plugin.io.pool.for_each``) that `cdra prm score`, `cdra eval` and `cdra build` run
their jobs through: each job once, at most N in flight, and the first error stops the others before it propagates."""

import asyncio

import pytest

from cdra_plugin.io.pool import for_each


def test_every_item_runs_once_with_at_most_parallel_in_flight():
    seen, running, peak = [], 0, 0

    async def job(item: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (item % 3))
        seen.append(item)
        running -= 1

    asyncio.run(for_each(range(50), job, 4))
    assert sorted(seen) == list(range(50)) and peak == 4
    asyncio.run(for_each([], job, 4))  # nothing to do is fine


def test_the_first_error_stops_the_other_jobs_before_it_propagates():
    stopped, finished = [], []

    async def job(item: int) -> None:
        if item == 3:
            raise RuntimeError("job 3 failed")
        try:
            await asyncio.sleep(10)
            finished.append(item)
        except asyncio.CancelledError:
            stopped.append(item)
            raise

    async def run() -> None:
        with pytest.raises(RuntimeError, match="job 3 failed"):
            await for_each(range(100), job, 8)
        assert sorted(stopped) == [0, 1, 2, 4, 5, 6, 7]  # all stopped by the time the error arrives here
        assert not finished

    asyncio.run(run())
