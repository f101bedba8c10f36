"""A scripted OpenAI-compatible server whose answers take a random time: a PRM replica under uneven load.

``ScriptedLLM(latency=...)`` delays every answer by the same amount; real generation times spread with the length of
the critique and the replica's batch. ``JitteredLLM`` draws each answer's delay uniformly from ``[low, high]``
seconds (seeded, so runs compare), which is what load tests of the gateway need (``scripts/bench_gateway_load.py``).

    with JitteredLLM(0.05, 0.2, script=lambda request: score_text(0.5)) as llm:
        ...  # llm.base_url, as ScriptedLLM
"""

from __future__ import annotations

import asyncio
import random

from cdra_plugin.stub.server import ScriptedLLM


class JitteredLLM(ScriptedLLM):
    """``ScriptedLLM`` with a uniform random latency in ``[low, high]`` per answer (no concurrency cap)."""

    def __init__(self, low: float, high: float, *, seed: int = 0, **kwargs):
        if not 0 <= low <= high:
            raise ValueError(f"latency range must satisfy 0 <= low <= high, got [{low}, {high}]")
        super().__init__(**kwargs)
        self.low, self.high = low, high
        self._random = random.Random(seed)

    async def _generate(self) -> None:
        await asyncio.sleep(self._random.uniform(self.low, self.high))
