"""Which backend serves an LLM call, and when: priority order, prefix-cache affinity, circuit breakers.

``cdra_plugin.llm.LLMClient`` asks a ``Dispatcher`` for a backend before each attempt and gives it back after.
The policy serves a rollout whose samples reach the PRM gateway one by one as they finish (paper Sec. 2.3-2.4;
OpenRLHF posts each sample to the remote RM right after generating it):

- **Capacity.** A backend never has more than ``concurrency`` calls in flight (what one vLLM replica batches well);
  calls beyond that wait in the dispatcher, not in vLLM's queue, so the dispatcher decides their order.
- **Order.** Waiting calls get a slot in ``priority`` order (ties: arrival order). The gateway passes the time its
  request arrived, so the steps of one response leave together and no response waits behind a later one's steps;
  a retry keeps its priority. As soon as any backend has room the first waiting call gets it (work-conserving).
- **Affinity.** A call with a key prefers the backend that ranks first for that key among the usable ones
  (rendezvous hashing: stable as backends come and go), so the step prompts of one response, which share
  (P, q, previous steps) as a prefix, meet vLLM's prefix cache. It takes that backend only while it has room and
  is at most ``slack`` calls busier than the least busy backend (default a quarter of ``concurrency``); otherwise
  the least busy one. So affinity never overloads a replica: loads stay within ``slack`` of each other.
- **Circuit breaker.** ``breaker_failures`` consecutive connection failures open a backend's breaker: it leaves the
  rotation (a dead backend fails fast, so "least busy" would otherwise send it most calls). After
  ``breaker_cooldown`` seconds it is half open: one probe call at a time; an answer closes the breaker, a connection
  failure or timeout opens it again. When every backend is open, calls go to the one open longest (a probe each),
  so they fail fast and are counted instead of waiting for ever.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import time
from collections.abc import Hashable

STATES = ("closed", "open", "half_open")


class Backend:
    """One server: its base URL, public label, calls in flight and breaker state."""

    def __init__(self, url: str, label: str):
        self.url = url
        self.label = label
        self.in_flight = 0
        self.state = "closed"
        self.failures = 0  # consecutive connection failures
        self.opened_at = 0.0  # time.monotonic() when the breaker last opened
        self.salt = label.encode()


def affinity_rank(key: Hashable, backend: Backend) -> bytes:
    """Rendezvous-hash weight of ``backend`` for ``key`` (the highest wins); the same in every process."""
    return hashlib.blake2b(str(key).encode(), digest_size=8, key=backend.salt[-64:]).digest()


class Dispatcher:
    def __init__(
        self,
        backends: list[Backend],
        concurrency: int,
        *,
        slack: int | None = None,
        breaker_failures: int = 3,
        breaker_cooldown: float = 5.0,
    ):
        if breaker_failures < 1 or breaker_cooldown <= 0:
            raise ValueError("breaker_failures must be >= 1 and breaker_cooldown > 0")
        self.backends = backends
        self.concurrency = concurrency
        self.slack = max(1, concurrency // 4) if slack is None else slack
        self.breaker_failures = breaker_failures
        self.breaker_cooldown = breaker_cooldown
        self._waiting: list[tuple[float, int, asyncio.Future, Hashable | None, Backend | None]] = []
        self._seq = itertools.count()
        self._turn = itertools.count()  # rotates the order in which equally busy backends are tried

    def reset(self) -> None:
        """Forget calls of an event loop that is gone (breaker states are kept)."""
        self._waiting.clear()
        for backend in self.backends:
            backend.in_flight = 0

    def states(self) -> list[dict]:
        return [
            {"backend": b.label, "state": b.state, "consecutive_failures": b.failures, "in_flight": b.in_flight}
            for b in self.backends
        ]

    async def acquire(self, priority: float, affinity: Hashable | None = None, avoid: Backend | None = None):
        """A backend with a slot for this call (counted in flight until ``release``); waits in priority order."""
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._seq), future, affinity, avoid))
        self._grant()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just before the cancellation: give it back
                self.release(future.result(), None)
            future.cancel()
            raise

    def release(self, backend: Backend, outcome: str | None) -> None:
        """The call on ``backend`` ended with ``outcome`` (a failure kind, "ok", or None if it was cancelled)."""
        backend.in_flight -= 1
        if outcome is not None:
            self._learn(backend, outcome)
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            _, _, future, affinity, avoid = self._waiting[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(self._waiting)
                continue
            backend = self._choose(affinity, avoid)
            if backend is None:
                return
            heapq.heappop(self._waiting)
            backend.in_flight += 1
            future.set_result(backend)

    def _learn(self, backend: Backend, outcome: str) -> None:
        if outcome == "connection" or (outcome == "timeout" and backend.state == "half_open"):
            backend.failures += 1
            if backend.state == "half_open" or backend.failures >= self.breaker_failures:
                backend.state, backend.opened_at = "open", time.monotonic()
        elif outcome != "timeout":  # the server answered
            backend.state, backend.failures = "closed", 0

    def _available(self, backend: Backend, now: float) -> bool:
        """Whether ``backend`` can take a call now (an open breaker past its cool-down turns half open here)."""
        if backend.state == "open" and now - backend.opened_at >= self.breaker_cooldown:
            backend.state = "half_open"
        if backend.state == "half_open":
            return backend.in_flight == 0  # one probe at a time
        return backend.state == "closed" and backend.in_flight < self.concurrency

    def _choose(self, affinity: Hashable | None, avoid: Backend | None) -> Backend | None:
        now = time.monotonic()
        usable = [b for b in self.backends if self._available(b, now)]
        if not usable:
            if any(b.state != "open" for b in self.backends):
                return None  # full: wait for a slot
            probe = min(self.backends, key=lambda b: b.opened_at)  # all open: fail fast through the oldest
            return probe if probe.in_flight < self.concurrency else None
        if avoid is not None and len(usable) > 1 and avoid in usable:
            usable.remove(avoid)  # a retry goes elsewhere when it can
        turn = next(self._turn) % len(usable)
        least = min(usable[turn:] + usable[:turn], key=lambda b: b.in_flight)
        if affinity is None:
            return least
        preferred = max(usable, key=lambda b: affinity_rank(affinity, b))
        return preferred if preferred.in_flight <= least.in_flight + self.slack else least
