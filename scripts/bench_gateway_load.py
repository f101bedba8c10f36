"""Load test of the PRM gateway: requests/s, latency percentiles, errors and memory under concurrent clients.

A simulated PRM (``sim.jitter.JitteredLLM``: each answer takes a uniform random 50-200 ms, no cap on
concurrent answers, so the backend is never the bottleneck by design) runs in its own process on loopback; so does
the real gateway (``cdra prm serve --concurrency 1024``, one process). A client posts ``--requests`` distinct
``/get_reward`` requests (one sample of ``--steps`` steps each, as OpenRLHF sends them; distinct, so the cache
never answers), ``--concurrency`` at a time, for each concurrency level. Reported per run: requests/s, p50/p99
latency, errors (non-200 answers and transport errors), the gateway's resident memory at the end and at its peak
(VmRSS, VmHWM), and its CPU time per request.

``--baseline REF`` runs the same load against another version of the gateway first, in the same run: REF is a
directory holding a ``cdra_plugin`` checkout, or a git ref of this repository (extracted with ``git archive`` into
a temporary directory). The gateway subprocess gets ``PYTHONPATH`` pointing at that code.

    python scripts/bench_gateway_load.py                          # this code: 2,000 requests at 64 and 256
    python scripts/bench_gateway_load.py --baseline 80a0b8e       # and the code before the reliability work

Output: a table, then one JSON line with every figure (the last line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "scripted-prm"


def run_backend(low: float, high: float) -> None:
    """Child mode: serve the simulated PRM until stdin closes; print its base URL first."""
    from sim.jitter import JitteredLLM

    from cdra_plugin.stub import score_text

    with JitteredLLM(low, high, script=lambda request: score_text(0.5), model=MODEL) as llm:
        print(llm.base_url, flush=True)
        sys.stdin.read()


def code_dir(ref: str, scratch: Path) -> Path:
    """A directory with the ``cdra_plugin`` of ``ref`` (a directory as is, or a git ref extracted into scratch)."""
    if Path(ref, "cdra_plugin").is_dir():
        return Path(ref).resolve()
    target = scratch / ref.replace("/", "_")
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def start_gateway(code: Path, backend_url: str) -> tuple[subprocess.Popen, str]:
    from cdra_plugin.stub.processes import free_port, start_server

    port = free_port()
    cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", backend_url, "--model", MODEL,
           "--port", str(port), "--concurrency", "1024", "--log-level", "warning"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return start_server(cmd, url + "/health", env={**os.environ, "PYTHONPATH": str(code)}, cwd=code), url


def process_stats(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (MiB), and CPU seconds so far, of process ``pid`` (Linux /proc)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    mib = {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}
    return {"rss_mib": mib["VmRSS"], "peak_rss_mib": mib["VmHWM"], "cpu_s": cpu_s}


def request_body(i: int, steps: int) -> dict:
    label = json.dumps({"preference": f"I prefer quiet places (user {i}).", "question": f"What to do in city {i}?"})
    response = "\n".join(
        f"Step {j}: For user {i}, consideration {j} weighs what they said against what they likely value."
        for j in range(1, steps + 1)
    )
    return {"query": ["<prompt>" + response], "prompts": ["<prompt>"], "labels": [label]}


async def load(url: str, requests: int, concurrency: int, steps: int, offset: int) -> dict:
    """``requests`` distinct /get_reward posts, ``concurrency`` in flight; latencies and error count."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies, errors = [], {}
    queue = iter(range(offset, offset + requests))
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def worker() -> None:
            for i in queue:
                started = time.perf_counter()
                try:
                    answer = await client.post(url + "/get_reward", json=request_body(i, steps))
                    error = None if answer.status_code == 200 else f"HTTP {answer.status_code}"
                    if answer.status_code == 502:  # the failure kinds the gateway names
                        error += " " + "/".join(sorted(set(re.findall(r"\b([a-z_]+) after \d+ attempt", answer.text))))
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                if error is not None:
                    errors[error] = errors.get(error, 0) + 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {"wall_s": wall, "rps": requests / wall, "p50_ms": 1e3 * cuts[49], "p99_ms": 1e3 * cuts[98],
            "errors": sum(errors.values()), "error_kinds": errors}  # fmt: skip


def run_one(code: Path, backend_url: str, args, concurrency: int, offset: int) -> dict:
    gateway, url = start_gateway(code, backend_url)
    try:
        before = process_stats(gateway.pid)
        result = asyncio.run(load(url, args.requests, concurrency, args.steps, offset))
        after = process_stats(gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    cpu_ms = 1e3 * (after["cpu_s"] - before["cpu_s"]) / args.requests
    return {**result, "rss_mib": after["rss_mib"], "peak_rss_mib": after["peak_rss_mib"], "cpu_ms_per_req": cpu_ms}


def median_run(runs: list[dict]) -> dict:
    """Each figure's median over the runs; error kinds summed."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "error_kinds"}
    kinds: dict[str, int] = {}
    for run in runs:
        for kind, n in run["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    return {**out, "error_kinds": kinds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    parser.add_argument("--concurrency", default="64,256", help="client concurrency levels (default 64,256)")
    parser.add_argument("--steps", type=int, default=4, help="steps per response = PRM calls per request (default 4)")
    parser.add_argument("--latency", default="0.05,0.2", help="backend latency range, s (default 0.05,0.2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (version, concurrency); the median is shown")
    parser.add_argument("--baseline", metavar="REF", help="also measure this version first (directory or git ref)")
    parser.add_argument("--_backend", nargs=2, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._backend:
        run_backend(*args._backend)
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    low, high = (float(x) for x in args.latency.split(","))

    cmd = [sys.executable, __file__, "--_backend", str(low), str(high)]
    backend = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    backend_url = backend.stdout.readline().strip()
    results: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        versions = {"this": ROOT}
        if args.baseline:
            versions = {f"baseline {args.baseline}": code_dir(args.baseline, Path(scratch)), **versions}
        try:
            offset = 0
            for concurrency in levels:
                for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits both alike
                    for name, code in versions.items():
                        run = run_one(code, backend_url, args, concurrency, offset)
                        offset += args.requests
                        results.setdefault(name, {}).setdefault(concurrency, []).append(run)
        finally:
            backend.stdin.close()
            backend.wait(timeout=30)

    medians = {name: {c: median_run(runs) for c, runs in by_level.items()} for name, by_level in results.items()}
    print(f"{args.requests} requests x {args.steps} steps, backend latency U[{low * 1e3:g}, {high * 1e3:g}] ms, "
          f"gateway --concurrency 1024; median of {args.repeats} run(s)")  # fmt: skip
    print(f"{'version':<22} {'conc':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'RSS MiB':>8} "
          f"{'peak MiB':>9} {'CPU ms/req':>11}  error kinds")  # fmt: skip
    for name, by_level in medians.items():
        for c, m in by_level.items():
            print(f"{name:<22} {c:>5} {m['rps']:>8.1f} {m['p50_ms']:>8.0f} {m['p99_ms']:>8.0f} {m['errors']:>7.0f} "
                  f"{m['rss_mib']:>8.0f} {m['peak_rss_mib']:>9.0f} {m['cpu_ms_per_req']:>11.2f}  "
                  f"{json.dumps(m['error_kinds']) if m['error_kinds'] else ''}")  # fmt: skip
    summary = {
        "requests": args.requests, "steps": args.steps, "latency_s": [low, high], "repeats": args.repeats,
        "results": {name: {str(c): m for c, m in by_level.items()} for name, by_level in medians.items()},
    }  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
