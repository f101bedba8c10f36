"""LLMClient scheduling against scripted servers: the circuit breaker, first come first served by priority (retries
keep theirs), prefix-cache affinity that never overloads a backend (cdra_plugin.llm.dispatch)."""

import asyncio
import random
import time

from llm_helpers import dead_url, state_of, until

from cdra_plugin.llm.client import LLMClient
from cdra_plugin.llm.dispatch import Backend, Dispatcher
from cdra_plugin.stub import Fault, ScriptedLLM

FAST = {"timeout": 2.0, "retries": 2, "backoff": 0.001, "backoff_max": 0.005}


async def gather_samples(client, calls):
    """``calls``: (prompt, kwargs) pairs, all issued at once; exceptions are returned, not raised."""
    try:
        return await asyncio.gather(*(client.sample(p, **kw) for p, kw in calls), return_exceptions=True)
    finally:
        await client.aclose()


def test_with_one_of_two_backends_dead_at_least_99_percent_of_calls_succeed():
    dead = dead_url()
    with ScriptedLLM(latency=0.01) as live:
        client = LLMClient([dead, live.base_url], "scripted-prm", concurrency=8, **FAST)  # the gateway's 2 retries
        results = asyncio.run(gather_samples(client, [(f"p{i}", {}) for i in range(300)]))
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(failed) <= 3, f"{len(failed)} of 300 calls failed: {failed[:3]}"
    assert len(live.requests) >= 297
    state = state_of(client, dead)
    assert state["state"] == "open" and state["consecutive_failures"] >= 3 and state["in_flight"] == 0
    assert live.max_active <= 8


def test_the_breaker_opens_after_consecutive_connection_failures_and_a_probe_closes_it():
    down = dead_url()
    port = int(down.rsplit(":", 1)[1].split("/")[0])
    with ScriptedLLM() as live:
        client = LLMClient([down, live.base_url], "scripted-prm", breaker_failures=2, breaker_cooldown=0.3, **FAST)

        async def scenario():
            for i in range(4):  # the down backend is the least busy one until its breaker opens
                await client.sample(f"a{i}")
            opened = state_of(client, down)
            served_while_open = len(live.requests)
            for i in range(6):
                await client.sample(f"b{i}")
            assert len(live.requests) - served_while_open == 6  # none tried the open backend
            health = await client.health(timeout=1.0)
            with ScriptedLLM(port=port) as revived:  # the backend comes back on its address
                await asyncio.sleep(0.35)  # past the cool-down: the next call makes the client probe it
                await asyncio.gather(*(client.sample(f"c{i}") for i in range(4)))
                await until(lambda: state_of(client, down)["state"] == "closed")
                closed = state_of(client, down)
                await asyncio.gather(*(client.sample(f"d{i}") for i in range(8)))
                revived_calls = len(revived.requests)
            await client.aclose()
            return opened, health, closed, revived_calls

        opened, health, closed, revived_calls = asyncio.run(scenario())
    assert opened["state"] == "open" and opened["consecutive_failures"] == 2
    assert [h["state"] for h in health] == ["open", "closed"] and health[0]["ok"] is False
    assert closed["state"] == "closed" and closed["consecutive_failures"] == 0
    assert revived_calls >= 4  # back in rotation


def test_a_half_open_backend_gets_one_probe_of_the_clients_own_and_a_failed_probe_opens_it_again():
    dead = dead_url()
    with ScriptedLLM(latency=0.05) as live:
        client = LLMClient([dead, live.base_url], "scripted-prm", breaker_failures=1, breaker_cooldown=0.2, **FAST)
        [backend] = [b for b in client.backends if b.url == dead]

        async def scenario():
            await client.sample("first")  # fails on the dead backend (opens its breaker), retried on the live one
            await asyncio.sleep(0.25)
            results = await asyncio.gather(*(client.sample(f"p{i}") for i in range(10)))
            await until(lambda: backend.state == "open")  # the probe failed
            await client.aclose()
            return results

        results = asyncio.run(scenario())
    assert all(r.backend == live.base_url for r in results)
    assert sum(r.attempts for r in results) == 10  # no caller's call was sent to the half-open backend
    assert backend.opens == {"connection": 2}  # opened by the first call, then again by the one probe


def test_waiting_calls_are_served_by_priority_so_no_response_waits_behind_a_later_ones_steps():
    with ScriptedLLM(latency=0.03) as llm:
        client = LLMClient([llm.base_url], "scripted-prm", concurrency=1, **FAST)

        async def scenario():
            blocker = asyncio.ensure_future(client.sample("blocker"))  # holds the only slot
            await asyncio.sleep(0.01)
            # Response B arrived at t=2 but its steps reach the client first; response A arrived at t=1.
            later = [asyncio.ensure_future(client.sample(f"B{j}", priority=2.0)) for j in range(3)]
            await asyncio.sleep(0.001)
            earlier = [asyncio.ensure_future(client.sample(f"A{j}", priority=1.0)) for j in range(3)]
            await asyncio.gather(blocker, *later, *earlier)
            await client.aclose()

        asyncio.run(scenario())
    assert [r.prompt for r in llm.requests] == ["blocker", "A0", "A1", "A2", "B0", "B1", "B2"]


def test_by_default_calls_are_first_come_first_served_and_a_retry_keeps_its_place():
    with ScriptedLLM(latency=0.03) as llm:
        llm.enqueue(Fault.http(500))  # the first step of response 0 fails once
        client = LLMClient([llm.base_url], "scripted-prm", concurrency=1, **FAST)

        async def scenario():
            tasks = []
            for r in range(4):  # responses arrive one after the other (before the first call's answer), two steps each
                tasks += [asyncio.ensure_future(client.sample(f"r{r}s{j}")) for j in range(2)]
                await asyncio.sleep(0)
            await asyncio.gather(*tasks)
            await client.aclose()

        asyncio.run(scenario())
    order = [r.prompt for r in llm.requests]
    # r0s0 failed; its retry goes before everything that arrived after it (a new place would put it last).
    assert order == ["r0s0", "r0s1", "r0s0", "r1s0", "r1s1", "r2s0", "r2s1", "r3s0", "r3s1"]


def test_affinity_keeps_the_steps_of_a_response_on_one_backend():
    with ScriptedLLM(latency=0.02) as a, ScriptedLLM(latency=0.02) as b, ScriptedLLM(latency=0.02) as c:
        servers = {s.base_url: s for s in (a, b, c)}
        # a generous deadline: a retry (after a timeout on a loaded machine) rightly goes to another backend
        client = LLMClient(list(servers), "scripted-prm", concurrency=32, **{**FAST, "timeout": 30.0})

        async def scenario():
            for key in range(12):  # one response at a time, its 5 steps at once
                await asyncio.gather(*(client.sample(f"k{key}s{j}", affinity=f"key-{key}") for j in range(5)))
            await client.aclose()

        asyncio.run(scenario())
    where = {}
    for url, server in servers.items():
        for request in server.requests:
            where.setdefault(request.prompt.split("s")[0], set()).add(url)
    assert all(len(urls) == 1 for urls in where.values()), where
    assert len({next(iter(urls)) for urls in where.values()}) == 3  # the keys spread over the backends


def test_affinity_never_overloads_a_backend():
    # The worst case: every call has the same key. All backends share the work and none exceeds its concurrency.
    with ScriptedLLM(latency=0.05) as a, ScriptedLLM(latency=0.05) as b, ScriptedLLM(latency=0.05) as c:
        client = LLMClient([a.base_url, b.base_url, c.base_url], "scripted-prm", concurrency=8, **FAST)
        started = time.perf_counter()
        results = asyncio.run(gather_samples(client, [(f"p{i}", {"affinity": "same-key"}) for i in range(120)]))
        elapsed = time.perf_counter() - started
    assert not [r for r in results if isinstance(r, Exception)]
    counts = sorted(len(s.requests) for s in (a, b, c))
    assert max(s.max_active for s in (a, b, c)) == 8
    assert counts[0] >= 30, counts  # 120 calls on 3 backends: none is starved, none takes them all
    assert elapsed < 2 * 120 * 0.05 / 24 + 0.5  # about the time of a balanced split (24 slots), not of one backend


def test_the_dispatcher_bounds_affinity_by_slack_never_exceeds_capacity_and_never_idles_a_slot():
    # The dispatcher itself, driven through random acquires and releases with few keys (so affinity pulls hard):
    # - an affinity choice is at most `slack` busier (in flight + queued) than the least loaded backend;
    # - no backend ever has more than `concurrency` calls in flight;
    # - work-conserving: while any call waits, every backend is full.
    rng = random.Random(7)
    backends = [Backend(f"http://b{i}/v1", f"b{i}") for i in range(4)]
    dispatcher = Dispatcher(backends, concurrency=6, slack=3)
    keys = ["k1", "k2", "k3"]

    async def scenario():
        held, waiting = [], []
        for _ in range(3000):
            loads = {b.label: b.load for b in backends}
            choice = dispatcher.assign(rng.choice(keys), None)
            assert loads[choice.label] <= min(loads.values()) + 3, loads
            if held and rng.random() < 0.5:
                dispatcher.release(held.pop(rng.randrange(len(held))), "ok", time.monotonic())
            else:
                waiting.append(asyncio.ensure_future(dispatcher.acquire(rng.random(), affinity=rng.choice(keys))))
            await asyncio.sleep(0)  # let granted acquires return
            held += [w.result() for w in waiting if w.done()]
            waiting = [w for w in waiting if not w.done()]
            assert all(b.in_flight <= 6 for b in backends)
            assert not waiting or all(b.in_flight == 6 for b in backends)
        return len(held) + len(waiting)

    assert asyncio.run(scenario()) > 10
