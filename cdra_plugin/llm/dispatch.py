"""Which backend serves an LLM call, and when: priority order, prefix-cache affinity, circuit breakers.

``cdra_plugin.llm.LLMClient`` asks a ``Dispatcher`` for a backend before each attempt and gives it back after.
The policy serves a rollout whose samples reach the PRM gateway one by one as they finish (paper Sec. 2.3-2.4;
OpenRLHF posts each sample to the remote RM right after generating it):

- **Capacity.** A backend never has more than ``concurrency`` calls in flight (what one vLLM replica batches well);
  calls beyond that wait here, each in the queue of the backend it was assigned to, not in vLLM's queue.
- **Assignment and affinity.** A call is assigned on arrival. With an ``affinity`` key it goes to the backend that
  ranks first for that key among the healthy ones (rendezvous hashing: stable as backends come and go), so the
  step prompts of one response, which share (P, q, previous steps) as a prefix, meet vLLM's prefix cache there;
  but only while that backend's load (calls in flight plus queued) is at most ``slack`` above the least loaded
  one's (default a quarter of ``concurrency``): affinity never overloads a replica. Otherwise, and without a key,
  the call goes to the least loaded backend.
- **Order.** A backend with a free slot serves its queue in ``priority`` order (ties: arrival order). The gateway
  passes the time a request arrived, so the steps of one response leave together and no response waits behind a
  later one's steps; a retry keeps its priority. A backend whose queue is empty takes the first waiting call of
  another queue (work stealing), so no slot idles while calls wait.
- **Circuit breaker.** ``breaker_failures`` consecutive connection failures open a backend's breaker: it leaves the
  rotation (a dead backend fails fast, so "least loaded" would otherwise send it most calls), and the calls queued
  for it go to the first free slot elsewhere. After ``breaker_cooldown`` seconds it is half open: one probe call at
  a time; an answer closes the breaker, a connection failure or timeout opens it again. When every backend is
  open, calls go to the one open longest (a probe each), so they fail fast and are counted instead of waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import time
from collections.abc import Hashable


class Backend:
    """One server: its base URL, public label, calls in flight and queued, and breaker state (closed, open or
    half_open)."""

    def __init__(self, url: str, label: str):
        self.url = url
        self.label = label
        self.in_flight = 0
        self.queue: list[tuple[float, int, asyncio.Future]] = []  # heap of (priority, arrival, future)
        self.state = "closed"
        self.failures = 0  # consecutive connection failures
        self.opened_at = 0.0  # time.monotonic() when the breaker last opened
        self.salt = label.encode()[-64:]

    @property
    def load(self) -> int:
        return self.in_flight + len(self.queue)

    def head(self) -> tuple[float, int, asyncio.Future] | None:
        """The first live waiter of the queue (waiters cancelled meanwhile are dropped)."""
        while self.queue and self.queue[0][2].done():
            heapq.heappop(self.queue)
        return self.queue[0] if self.queue else None


def affinity_rank(key: Hashable, backend: Backend) -> bytes:
    """Rendezvous-hash weight of ``backend`` for ``key`` (the highest wins); the same in every process."""
    return hashlib.blake2b(str(key).encode(), digest_size=8, key=backend.salt).digest()


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
        self._arrival = itertools.count()
        self._turn = itertools.count()  # rotates the order in which equally loaded backends are tried

    def reset(self) -> None:
        """Forget calls of an event loop that is gone (breaker states are kept)."""
        for backend in self.backends:
            backend.in_flight = 0
            backend.queue.clear()

    def states(self) -> list[dict]:
        return [
            {"backend": b.label, "state": b.state, "consecutive_failures": b.failures, "in_flight": b.in_flight,
             "queued": len(b.queue)}
            for b in self.backends
        ]  # fmt: skip

    async def acquire(self, priority: float, affinity: Hashable | None = None, avoid: Backend | None = None):
        """A backend with a slot for this call (counted in flight until ``release``); waits in priority order."""
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self.assign(affinity, avoid).queue, (priority, next(self._arrival), future))
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

    def assign(self, affinity: Hashable | None, avoid: Backend | None) -> Backend:
        """The backend whose queue a new call joins (see module docstring)."""
        self._refresh()
        for backend in self.backends:
            if backend.state == "half_open" and backend.load == 0 and backend is not avoid:
                return backend  # the probe
        healthy = [b for b in self.backends if b.state == "closed"]
        if not healthy:  # every breaker open or probing: the one open longest takes the call
            return min(self.backends, key=lambda b: b.opened_at)
        if avoid is not None and len(healthy) > 1 and avoid in healthy:
            healthy.remove(avoid)  # a retry goes elsewhere when it can
        turn = next(self._turn) % len(healthy)
        least = min(healthy[turn:] + healthy[:turn], key=lambda b: b.load)
        if affinity is None:
            return least
        preferred = max(healthy, key=lambda b: affinity_rank(affinity, b))
        return preferred if preferred.load <= least.load + self.slack else least

    def _grant(self) -> None:
        """Fill free slots: first each backend from its own queue (and the queues of unhealthy backends), then
        from the queues of full backends (stealing), so a call waits only while every usable slot is taken."""
        self._refresh()
        everything_open = all(b.state == "open" for b in self.backends)
        for steal in (False, True):
            for backend in self.backends:
                while self._has_room(backend, everything_open):
                    source = self._next_queue(backend, steal)
                    if source is None:
                        break
                    _, _, future = heapq.heappop(source.queue)
                    backend.in_flight += 1
                    future.set_result(backend)

    def _refresh(self) -> None:
        """Open breakers past their cool-down turn half open."""
        now = time.monotonic()
        for backend in self.backends:
            if backend.state == "open" and now - backend.opened_at >= self.breaker_cooldown:
                backend.state = "half_open"

    def _has_room(self, backend: Backend, everything_open: bool) -> bool:
        if everything_open:  # fail fast through the backend open longest
            return backend is min(self.backends, key=lambda b: b.opened_at) and backend.in_flight < self.concurrency
        if backend.state == "half_open":
            return backend.in_flight == 0  # one probe at a time
        return backend.state == "closed" and backend.in_flight < self.concurrency

    def _next_queue(self, backend: Backend, steal: bool) -> Backend | None:
        """The queue whose first waiter ``backend`` serves next (lowest priority value first): its own or an
        unhealthy backend's; when stealing, any (after the first pass only full backends have waiters)."""
        queues = [b for b in self.backends if (steal or b is backend or b.state != "closed") and b.head()]
        return min(queues, key=lambda b: b.head()[:2], default=None)

    def _learn(self, backend: Backend, outcome: str) -> None:
        if outcome == "connection" or (outcome == "timeout" and backend.state == "half_open"):
            backend.failures += 1
            if backend.state == "half_open" or backend.failures >= self.breaker_failures:
                backend.state, backend.opened_at = "open", time.monotonic()
        elif outcome != "timeout":  # the server answered
            backend.state, backend.failures = "closed", 0
