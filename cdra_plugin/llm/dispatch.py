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
- **Circuit breaker.** A backend that cannot serve leaves the rotation (a dead backend fails fast, so "least loaded"
  would otherwise send it most calls), and the calls queued for it go to the first free slot elsewhere.
  ``breaker_failures`` consecutive failures open its breaker (no connection, a 5xx, a broken answer); two failures
  open it at once: a 401/403/404 (``not_served``: it cannot serve this model), and a timeout of a backend that
  answered nothing since that call began while another backend did (it hangs: waiting for more timeouts would
  refill its freed slots with calls that hang too; when every backend times out, the fleet is slow and no breaker
  opens). Any answer, even one the caller rejects, a 400 or a 429, resets the count. After ``breaker_cooldown``
  seconds it is half open: the client sends it a probe of its own (``due_probes``, ``probed``), never a caller's
  call, which a hung replica would hold for a whole timeout; an answer closes the breaker, a failure opens it
  again. When no backend is in rotation, calls go to the one out longest, so they fail fast and are counted.
- **Retries elsewhere.** A retry passes the backend that just failed it as ``avoid``: it is queued elsewhere, and
  that backend never takes it from another queue while any other backend is in rotation.
- **Metrics.** ``BackendMetrics`` shows all of this to Prometheus at scrape time (``LLMClient.register_metrics``).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import math
import time
from collections import Counter
from collections.abc import Hashable

# Outcomes that show the backend alive: it answered (a rejected answer, a 400 and a 429 are the call's problem).
ANSWERED = ("ok", "unparsable", "client_error", "rate_limited")
STATES = ("closed", "open", "half_open")


class Backend:
    """One server: its base URL, public label, calls in flight and queued, and breaker state (one of STATES)."""

    def __init__(self, url: str, label: str):
        self.url = url
        self.label = label
        self.in_flight = 0
        self.queue: list[tuple] = []  # heap of (priority, arrival, future, avoid): avoid is a Backend or None
        self.state = "closed"
        self.failures = 0  # consecutive failures since its last answer
        self.opened_at = 0.0  # time.monotonic() when the breaker last opened
        self.answered_at = -math.inf  # time.monotonic() of its last answer
        self.opened_by: str | None = None  # the failure kind that last opened the breaker
        self.error: str | None = None  # the message of its last failure
        self.opens: Counter[str] = Counter()  # breaker openings by failure kind
        self.salt = label.encode()[-64:]

    @property
    def load(self) -> int:
        return self.in_flight + len(self.queue)

    def head(self, server: Backend | None = None) -> tuple | None:
        """The first live waiter of the queue that ``server`` may take: not a retry avoiding ``server`` (None: any).
        Waiters cancelled meanwhile are dropped."""
        while self.queue and self.queue[0][2].done():
            heapq.heappop(self.queue)
        if not self.queue or server is None or self.queue[0][3] is not server:
            return self.queue[0] if self.queue else None
        return min((w for w in self.queue if w[3] is not server and not w[2].done()), default=None)  # rare: a scan

    def take(self, waiter: tuple) -> None:
        if self.queue[0] is waiter:
            heapq.heappop(self.queue)
        else:
            self.queue.remove(waiter)
            heapq.heapify(self.queue)


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
        self.backends = backends
        self.concurrency = concurrency
        self.slack = max(1, concurrency // 4) if slack is None else slack
        self.breaker_failures = breaker_failures
        self.breaker_cooldown = breaker_cooldown
        self._arrival = itertools.count()
        self._turn = itertools.count()  # rotates the order in which equally loaded backends are tried

    def reset(self) -> None:
        """Forget calls and probes of an event loop that is gone (breaker states are kept)."""
        for backend in self.backends:
            backend.in_flight = 0
            backend.queue.clear()
            if backend.state == "half_open":  # its probe is gone: probe it again
                backend.state = "open"

    def states(self) -> list[dict]:
        return [
            {"backend": b.label, "state": b.state, "consecutive_failures": b.failures, "in_flight": b.in_flight,
             "queued": len(b.queue), "opened_by": b.opened_by, "error": b.error}
            for b in self.backends
        ]  # fmt: skip

    def in_rotation(self) -> bool:
        """Whether some backend's breaker is closed."""
        return any(b.state == "closed" for b in self.backends)

    def due_probes(self) -> list[Backend]:
        """The backends whose breaker's cool-down has passed: half open from now on, for the caller to probe once and
        report with ``probed``."""
        now = time.monotonic()
        due = [b for b in self.backends if b.state == "open" and now - b.opened_at >= self.breaker_cooldown]
        for backend in due:
            backend.state = "half_open"
        return due

    def probed(self, backend: Backend, outcome: str, started: float, error: str | None = None) -> None:
        """The probe of ``backend`` ended with ``outcome``: an answer closes its breaker, a failure opens it again."""
        self._learn(backend, outcome, started, error)
        self._grant()

    async def acquire(self, priority: float, affinity: Hashable | None = None, avoid: Backend | None = None):
        """A backend with a slot for this call (counted in flight until ``release``); waits in priority order.
        ``avoid``: the backend that failed this call's previous attempt."""
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self.assign(affinity, avoid).queue, (priority, next(self._arrival), future, avoid))
        self._grant()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just before the cancellation: give it back
                self.release(future.result(), None, 0.0)
            future.cancel()
            raise

    def release(self, backend: Backend, outcome: str | None, started: float, error: str | None = None) -> None:
        """The call on ``backend``, begun at ``started`` (``time.monotonic()``), ended with ``outcome`` (a failure
        kind, "ok", or None if it was cancelled) and, for a failure, the message ``error``."""
        backend.in_flight -= 1
        if outcome is not None:
            self._learn(backend, outcome, started, error)
        self._grant()

    def assign(self, affinity: Hashable | None, avoid: Backend | None) -> Backend:
        """The backend whose queue a new call joins (see module docstring)."""
        healthy = [b for b in self.backends if b.state == "closed"]
        if not healthy:  # none in rotation: the one out longest takes the call
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
        none_in_rotation = not self.in_rotation()
        for steal in (False, True):
            for backend in self.backends:
                # a retry never goes back to the backend that failed it while another one is in rotation
                others = any(b is not backend and b.state == "closed" for b in self.backends)
                while self._has_room(backend, none_in_rotation):
                    source, waiter = self._next_waiter(backend, steal, backend if others else None)
                    if waiter is None:
                        break
                    source.take(waiter)
                    backend.in_flight += 1
                    waiter[2].set_result(backend)

    def _has_room(self, backend: Backend, none_in_rotation: bool) -> bool:
        if none_in_rotation:  # fail fast through the backend out longest
            return backend is min(self.backends, key=lambda b: b.opened_at) and backend.in_flight < self.concurrency
        return backend.state == "closed" and backend.in_flight < self.concurrency

    def _next_waiter(self, backend: Backend, steal: bool, server: Backend | None) -> tuple[Backend | None, tuple]:
        """The queue and waiter ``backend`` serves next (lowest priority value first): from its own queue or an
        unhealthy backend's; when stealing, from any (after the first pass only full backends have waiters)."""
        source, best = None, None
        for b in self.backends:
            if steal or b is backend or b.state != "closed":
                waiter = b.head(server)
                if waiter is not None and (best is None or waiter[:2] < best[:2]):
                    best, source = waiter, b
        return source, best

    def _learn(self, backend: Backend, outcome: str, started: float, error: str | None) -> None:
        now = time.monotonic()
        if outcome in ANSWERED:
            backend.state, backend.failures, backend.answered_at = "closed", 0, now
            return
        backend.failures += 1
        backend.error = error
        if (
            outcome == "not_served"
            or backend.state == "half_open"
            or (self._hung(backend, started) if outcome == "timeout" else backend.failures >= self.breaker_failures)
        ):
            if backend.state != "open":
                backend.opens[outcome] += 1
            backend.state, backend.opened_at, backend.opened_by = "open", now, outcome

    def _hung(self, backend: Backend, started: float) -> bool:
        """No answer from ``backend`` since ``started`` while another backend answered: it hangs, the fleet is not
        just slow (then every backend would time out alike, and taking one out would only add to the others' load).
        """
        others = (b.answered_at >= started for b in self.backends if b is not backend)
        return backend.answered_at < started and any(others)


class BackendMetrics:
    """A Prometheus collector of the dispatcher's backends, read at scrape time; names start with ``prefix``:

    - ``<prefix>_calls_in_flight``: calls in flight on all backends;
    - ``<prefix>_backend_open{backend}``: 1 while the breaker keeps the backend out of rotation (open or half open);
    - ``<prefix>_backend_state{backend,state}``: 1 for its breaker's state (closed, open, half_open), else 0;
    - ``<prefix>_backend_in_flight{backend}``, ``<prefix>_backend_queued{backend}``: its calls;
    - ``<prefix>_backend_breaker_opens_total{backend,reason}``: times its breaker opened, by the failure kind.
    """

    def __init__(self, dispatcher: Dispatcher, prefix: str):
        self.dispatcher = dispatcher
        self.prefix = prefix

    def describe(self):
        return self._families(with_samples=False)

    def collect(self):
        return self._families(with_samples=True)

    def _families(self, with_samples: bool) -> list:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p, backends = self.prefix, self.dispatcher.backends if with_samples else []
        total = GaugeMetricFamily(f"{p}_calls_in_flight", "LLM calls in flight, all backends")
        is_open = GaugeMetricFamily(f"{p}_backend_open", "1 while a backend's circuit breaker keeps it out of "
                                    "rotation (open or half open)", labels=["backend"])  # fmt: skip
        state = GaugeMetricFamily(f"{p}_backend_state", "1 for the state of a backend's circuit breaker",
                                  labels=["backend", "state"])  # fmt: skip
        in_flight = GaugeMetricFamily(f"{p}_backend_in_flight", "LLM calls in flight on a backend", labels=["backend"])
        queued = GaugeMetricFamily(f"{p}_backend_queued", "LLM calls waiting for a backend", labels=["backend"])
        opens = CounterMetricFamily(f"{p}_backend_breaker_opens", "Times a backend's circuit breaker opened, by the "
                                    "failure kind that opened it", labels=["backend", "reason"])  # fmt: skip
        if with_samples:
            total.add_metric([], sum(b.in_flight for b in backends))
        for b in backends:
            is_open.add_metric([b.label], float(b.state != "closed"))
            for name in STATES:
                state.add_metric([b.label, name], float(b.state == name))
            in_flight.add_metric([b.label], b.in_flight)
            queued.add_metric([b.label], len(b.queue))
            for reason, count in sorted(b.opens.items()):
                opens.add_metric([b.label, reason], count)
        return [total, is_open, state, in_flight, queued, opens]
