"""Step-level PRM results: what lets the gateway score a step while the policy is still writing the next one.

Pers-GenPRM judges step j from (P, q, steps 1..j) alone (paper Sec. 2.3, Eq. 1; the Fig. 15 prompt), so a step's
result depends on exactly that and on the PRM's settings, not on the response it came from. ``StepCache`` keys each
step's result by (P, q, the earlier steps' texts, this step's text, the gateway's PRM identity: template, model,
prompt format, sampling settings, k and its aggregation) and sits around every PRM call of ``StepScorer``. So:

- the streaming executor (``cdra_plugin.openrlhf.stream``) posts the completed steps of a response still being
  generated to ``POST /score_prefix``; the final ``/get_reward`` finds them done, or joins their PRM call while it is
  still in flight, and pays only for the steps not yet scored: no step is sent to the PRM twice;
- a step whose early scoring failed is not kept, so the final call scores it again, under the usual failure policy;
  a final call that joined a PRM call which then failed tries once itself: an early call never fails a sample;
- without streaming nothing changes, except that responses sharing (P, q, steps 1..j) share those steps' scores.

A cached step keeps its critiques, scores, failure and latency; its position (index, span) is the asking response's.
The cache is bounded like the sample cache (``--cache-mb``, LRU by estimated bytes; 0 = nothing kept, in-flight
calls still joined) and counted in ``/metrics``:

- ``cdra_prm_step_lookups_total{call, result}``: steps asked for by early (``/score_prefix``) or final calls, found
  kept (``hit``), joined in flight (``joined``) or scored now (``miss``); the steps served from the step cache at the
  final call are the final ``hit`` and ``joined`` ones;
- ``cdra_prm_early_steps_total{outcome}``: steps whose PRM call an early call started, ``scored`` or ``failed``;
- ``cdra_prm_step_cache_bytes``: its estimated size.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Sequence

from cdra_plugin.prm.cache import ResultCache, content_key
from cdra_plugin.prm.scoring import SampleResult, StepResult


class StepCache:
    """Results of single steps, ``max_bytes`` at most (0: none kept), for one PRM ``identity`` (module docstring)."""

    def __init__(self, max_bytes: int, identity: dict, metrics=None):
        self._identity = content_key(**identity).encode()  # hashed once: every step key starts from it
        self.metrics = metrics
        self._results = ResultCache(max_bytes, lambda step: SampleResult([step], 0.0).nbytes())
        self._streaming = False  # set by the first early call (``/score_prefix``)

    def keys(self, preference: str, question: str, bodies: Sequence[str]) -> list[str]:
        """The key of each step j of a response: a hash chained over (identity, P, q, steps 1..j), so a response's
        T keys cost one pass over its text (each field length-prefixed: no two inputs share a key)."""
        chain = hashlib.blake2b(self._identity, digest_size=16)
        for field in (preference, question):
            data = field.encode()
            chain.update(b"%d:" % len(data) + data)
        keys = []
        for body in bodies:
            data = body.encode()
            chain.update(b"%d:" % len(data) + data)
            keys.append(chain.copy().hexdigest())
        return keys

    @property
    def nbytes(self) -> int:
        return self._results.nbytes

    async def result(self, key: str, step, compute: Callable[[], Awaitable[StepResult]], *, early: bool) -> StepResult:
        """Step ``step`` (a ``cdra_plugin.cdpa.steps.Step``) of key ``key`` (``keys``): kept, joined in flight, or
        ``compute()``d now. ``early``: asked by ``/score_prefix``."""
        self._streaming = self._streaming or early
        found, result = await self._lookup(key, compute)
        if self.metrics is not None:
            self.metrics.step_lookups.labels("early" if early else "final", found).inc()
            if early and found == "miss":
                self.metrics.early_steps.labels("failed" if result.score is None else "scored").inc()
        if not early and found == "joined" and result.score is None:  # e.g. a failed early call: try it ourselves
            found, result = await self._lookup(key, compute)
        return dataclasses.replace(result, index=step.index, start=step.start, end=step.end)

    async def _lookup(self, key: str, compute) -> tuple[str, StepResult]:
        """``("hit" | "joined" | "miss", result)``: kept, joined in flight, or computed by this call."""
        found = "hit" if self._results.peek(key) is not None else "joined"

        def start():
            nonlocal found
            found = "miss"
            return compute()

        # Until a streaming executor has sent an early call, no call is joined by another (each sample comes once):
        # computing in the caller's task saves the shared task's cost on every step of a post-hoc run.
        result = await self._results.get_or_compute(
            key, start, keep=lambda r: r.score is not None, joinable=self._streaming
        )
        return found, result
