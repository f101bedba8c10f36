"""The io/ helpers every command shares: one writer per output (cdra_plugin.io.lock), the resumable output that eval
generate, eval judge (and its cache), prm score and the build journal use (cdra_plugin.io.resumable), and the
single-flight cache of the gateway and the judge (cdra_plugin.io.singleflight)."""

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest

from cdra_plugin.io.lock import Busy, hold
from cdra_plugin.io.resumable import ResumableOutput
from cdra_plugin.io.singleflight import SingleFlight


def write(path, *records, tail=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)


def output(path, **options):
    return ResumableOutput(path, key=lambda r: r["id"], required=("id",), **options)


def test_what_is_done_is_read_back_and_new_records_join_it(tmp_path):
    path = tmp_path / "out.jsonl"
    write(path, {"id": "a"}, {"id": "b", "n": 1}, {"id": "b", "n": 2})  # the last record of a key wins
    with output(path) as out:
        assert out.done == {"a": {"id": "a"}, "b": {"id": "b", "n": 2}} and len(out.records) == 3
        out.write({"id": "c"})
        assert "c" in out.done
    assert [r["id"] for r in map(json.loads, path.read_text().splitlines())] == ["a", "b", "b", "c"]


def test_a_second_writer_is_refused_also_from_another_process(tmp_path):
    path = tmp_path / "out.jsonl"
    with output(path) as out:
        with pytest.raises(Busy, match=f"{path}: another run is writing it now"), output(path):
            pass
        script = textwrap.dedent(f"""
            from pathlib import Path
            from cdra_plugin.io.lock import Busy, hold
            try:
                hold(Path({str(path)!r}))
            except Busy as exc:
                print(exc)
        """)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
        assert "another run is writing it now" in other.stdout, other.stderr
        out.write({"id": "a"})
    with output(path) as out:  # released at the end of the block
        assert list(out.done) == ["a"]


def test_the_lock_follows_a_repaired_file(tmp_path):
    # The repair of a torn line replaces the file: the lock must hold on the new one, not on the old inode.
    path = tmp_path / "out.jsonl"
    write(path, {"id": "a"}, tail=b'{"id": "b", "te')
    inode = path.stat().st_ino
    with output(path) as out:
        assert path.stat().st_ino != inode and list(out.done) == ["a"]
        with pytest.raises(Busy):
            hold(path)


def test_a_refused_output_is_left_as_it_was_even_with_redo(tmp_path):
    path = tmp_path / "out.jsonl"
    write(path, {"id": "a", "ok": False}, {"id": "b", "ok": True, "model": "other"})
    before = path.read_bytes()

    def check(kept):
        if any(r.get("model") == "other" for r in kept):
            raise ValueError("another model's rows")

    with pytest.raises(ValueError, match="another model's rows"):
        with output(path, check=check, redo=lambda r: not r["ok"]):
            pass
    assert path.read_bytes() == before
    with output(path, redo=lambda r: not r["ok"]) as out:  # accepted: the redone rows leave the file, atomically
        assert list(out.done) == ["b"] and out.redone == [{"id": "a", "ok": False}]
    assert path.read_bytes() == b'{"id": "b", "ok": true, "model": "other"}\n'


def test_a_run_that_writes_nothing_leaves_nothing(tmp_path):
    path = tmp_path / "new" / "deeper" / "out.jsonl"
    with output(path) as out:
        assert path.exists()  # created to hold the lock
        assert out.done == {}
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError), output(path):
        raise RuntimeError("a run that failed before writing")
    assert not (tmp_path / "new").exists()


def test_a_record_whose_key_cannot_be_read_names_the_file(tmp_path):
    path = tmp_path / "out.jsonl"
    write(path, {"id": "a", "sample": "x"})
    bad = ResumableOutput(path, key=lambda r: (r["id"], int(r["sample"])), what="a response row")
    with pytest.raises(ValueError, match=rf"{path}: not a response row \(ValueError: .*\); is --output the right"):
        with bad:
            pass
    write(path, {"id": "a"}, {"no": "id"}, {"id": "c"})
    with pytest.raises(ValueError, match=rf"{path}:2: not a record this command wrote"):
        with output(path):
            pass


def store():
    class Store(dict):
        def lookup(self, key):
            return self.get(key)

        def save(self, key, value):
            self[key] = value

    return Store()


def test_single_flight_computes_each_key_once_and_stores_only_what_it_keeps():
    async def scenario():
        calls = []
        observed = []
        flights = SingleFlight(store(), observe=observed.append)

        async def compute(value):
            calls.append(value)
            await asyncio.sleep(0.01)
            return value

        got = await asyncio.gather(*(flights.get("k", lambda: compute("v")) for _ in range(5)))
        assert got == ["v"] * 5 and calls == ["v"]
        assert await flights.get("k", lambda: compute("other")) == "v" and calls == ["v"]
        assert await flights.get("partial", lambda: compute("x"), keep=lambda v: False) == "x"
        assert await flights.get("partial", lambda: compute("y"), keep=lambda v: False) == "y"  # not stored
        assert flights.counts == {"miss": 3, "shared": 4, "hit": 1} and observed.count("shared") == 4

    asyncio.run(scenario())


def test_a_failure_reaches_every_waiter_and_is_not_stored():
    async def scenario():
        flights, attempts = SingleFlight(store()), []

        async def failing():
            attempts.append(1)
            await asyncio.sleep(0.01)
            raise ConnectionError("down")

        results = await asyncio.gather(*(flights.get("k", failing) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results) and len(attempts) == 1

        async def ok():
            return "up"

        assert await flights.get("k", ok) == "up"

    asyncio.run(scenario())


def test_a_cancelled_caller_does_not_cancel_the_work_and_aclose_does():
    async def scenario():
        flights, finished = SingleFlight(store()), []

        async def slow(value, seconds):
            await asyncio.sleep(seconds)
            finished.append(value)
            return value

        caller = asyncio.ensure_future(flights.get("k", lambda: slow("v", 0.05)))
        await asyncio.sleep(0.01)
        caller.cancel()  # a client that disconnected; the retry finds the result
        assert await flights.get("k", lambda: slow("other", 0)) == "v" and finished == ["v"]
        pending = asyncio.ensure_future(flights.get("late", lambda: slow("late", 10)))
        await asyncio.sleep(0.01)
        await flights.aclose()  # at shutdown: nothing runs on, nothing reaches the store
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert flights.store.lookup("late") is None and "late" not in finished

    asyncio.run(scenario())


def test_a_computation_nobody_joins_runs_in_the_callers_task_and_still_joins_one_running():
    async def scenario():
        flights, calls = SingleFlight(store()), []

        async def compute(value):
            calls.append((value, asyncio.current_task()))
            await asyncio.sleep(0.01)
            return value

        assert await flights.get("own", lambda: compute("v"), joinable=False) == "v"
        assert calls[0][1] is asyncio.current_task() and flights.store["own"] == "v"  # no task of its own
        running = asyncio.ensure_future(flights.get("shared", lambda: compute("first")))
        await asyncio.sleep(0)
        assert await flights.get("shared", lambda: compute("second"), joinable=False) == "first"
        assert await running == "first" and [v for v, _ in calls] == ["v", "first"]
        assert await flights.get("partial", lambda: compute("x"), keep=lambda v: False, joinable=False) == "x"
        assert "partial" not in flights.store

    asyncio.run(scenario())
