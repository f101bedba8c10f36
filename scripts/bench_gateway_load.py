"""Load test of the PRM gateway: requests/s, latency percentiles, errors, memory and CPU under concurrent clients.

Simulated PRM replicas (``sim.jitter.JitteredLLM``: each answer takes a uniform random 50-200 ms, no cap on
concurrent answers, so a healthy backend is never the bottleneck by design) run in a child process on loopback; so
does the real gateway (``cdra prm serve``, one process). This process is the load generator: it posts ``--requests``
distinct ``/get_reward`` requests (one sample of ``--steps`` steps each, as OpenRLHF sends them; distinct, so the
cache never answers), ``--concurrency`` at a time, for each concurrency level. Reported per run: requests/s, p50/p99
latency, requests slower than ``--slow`` seconds (stalled on a hung replica), errors (non-200 answers and transport
errors, with the failure kinds a 502 names), the gateway's resident memory at the end and at its peak (VmRSS,
VmHWM), and the CPU time of the gateway and of the load generator, per request and as a share of one core.

The generator must cost less CPU than the server, or it measures itself: it speaks HTTP with ``aiohttp`` (about a
tenth of the gateway's CPU per request). ``--client aiohttp,httpx`` also runs the ``httpx`` generator of earlier
versions of this script in the same run, to show what it measured.

``--sick 404|500|hang`` adds one misbehaving replica beside the ``--replicas`` healthy ones: it answers 404 ("model
does not exist", a mis-set ``--served-model-name``), 500 at once, or accepts the call and never answers.

``--baseline REF`` runs the same load against another version of the gateway first, in the same run: REF is a
directory holding a ``cdra_plugin`` checkout, or a git ref of this repository (extracted with ``git archive`` into
a temporary directory). The gateway subprocess gets ``PYTHONPATH`` pointing at that code.

    python scripts/bench_gateway_load.py                          # this code: 2,000 requests at 64 and 256
    python scripts/bench_gateway_load.py --client aiohttp,httpx   # and the httpx load generator
    python scripts/bench_gateway_load.py --baseline main --sick hang --requests 10000 --concurrency 64 \\
        --gateway-concurrency 64 --gateway-timeout 10 --slow 5    # a hung replica, before and after

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

from machine import describe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's cdra_plugin for the script itself, as the other benchmarks do
MODEL = "scripted-prm"
SICK = ("404", "500", "hang")


def run_backend(low: float, high: float, behaviour: str) -> None:
    """Child mode: serve one simulated PRM replica until stdin closes; print its base URL first."""
    from sim.jitter import JitteredLLM

    from cdra_plugin.stub import Fault, score_text

    reply = {
        "ok": score_text(0.5),
        "404": Fault.http(404, f"The model `{MODEL}` does not exist."),
        "500": Fault.http(500),
        "hang": Fault.hang(24 * 3600.0),
    }[behaviour]
    with JitteredLLM(low, high, script=lambda request: reply, model=MODEL) as llm:
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


def start_gateway(code: Path, backend_urls: list[str], args) -> tuple[subprocess.Popen, str]:
    from cdra_plugin.stub.processes import free_port, start_server

    port = free_port()
    timeout = [] if args.gateway_timeout is None else ["--timeout", str(args.gateway_timeout)]
    cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", ",".join(backend_urls), "--model",
           MODEL, "--port", str(port), "--concurrency", str(args.gateway_concurrency), *timeout,
           "--log-level", "error"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return start_server(cmd, url + "/health", env={**os.environ, "PYTHONPATH": str(code)}, cwd=code), url


def process_stats(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (MiB), and CPU seconds so far, of process ``pid`` (Linux /proc)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    mib = {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}
    return {"rss_mib": mib["VmRSS"], "peak_rss_mib": mib["VmHWM"], "cpu_s": cpu_s}


def request_body(i: int, steps: int) -> bytes:
    label = json.dumps({"preference": f"I prefer quiet places (user {i}).", "question": f"What to do in city {i}?"})
    response = "\n".join(
        f"Step {j}: For user {i}, consideration {j} weighs what they said against what they likely value."
        for j in range(1, steps + 1)
    )
    return json.dumps({"query": ["<prompt>" + response], "prompts": ["<prompt>"], "labels": [label]}).encode()


def error_of(status: int, text: str) -> str | None:
    """None for a 200; else the status and, for a 502, the failure kinds the gateway names."""
    if status == 200:
        return None
    kinds = "/".join(sorted(set(re.findall(r"\b([a-z_]+) after \d+ attempt", text)))) if status == 502 else ""
    return f"HTTP {status} {kinds}".strip()


async def post_aiohttp(url: str, bodies: list[bytes], concurrency: int, record) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def one(body: bytes) -> str | None:
            try:
                async with session.post(url, data=body) as answer:
                    return error_of(answer.status, await answer.text())
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return type(exc).__name__

        await workers(bodies, concurrency, one, record)


async def post_httpx(url: str, bodies: list[bytes], concurrency: int, record) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=300, headers=headers) as client:

        async def one(body: bytes) -> str | None:
            try:
                answer = await client.post(url, content=body)
                return error_of(answer.status_code, answer.text)
            except httpx.HTTPError as exc:
                return type(exc).__name__

        await workers(bodies, concurrency, one, record)


async def workers(bodies: list[bytes], concurrency: int, one, record) -> None:
    """``concurrency`` workers, each posting the next body as soon as its previous answer came."""
    queue = iter(bodies)

    async def worker() -> None:
        for body in queue:
            started = time.perf_counter()
            error = await one(body)
            record(time.perf_counter() - started, error)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


CLIENTS = {"aiohttp": post_aiohttp, "httpx": post_httpx}


def load(client: str, url: str, bodies: list[bytes], concurrency: int, slow_s: float) -> dict:
    """Post ``bodies`` to /get_reward, ``concurrency`` in flight: throughput, latency, errors and this CPU's cost."""
    latencies, errors = [], {}

    def record(seconds: float, error: str | None) -> None:
        latencies.append(seconds)
        if error is not None:
            errors[error] = errors.get(error, 0) + 1

    cpu, started = time.process_time(), time.perf_counter()
    asyncio.run(CLIENTS[client](url + "/get_reward", bodies, concurrency, record))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    cuts = statistics.quantiles(latencies, n=100)
    return {"wall_s": wall, "rps": len(bodies) / wall, "p50_ms": 1e3 * cuts[49], "p99_ms": 1e3 * cuts[98],
            "slow": sum(s > slow_s for s in latencies), "errors": sum(errors.values()), "error_kinds": errors,
            "client_cpu_s": cpu}  # fmt: skip


def run_one(code: Path, backend_urls: list[str], args, client: str, concurrency: int, offset: int) -> dict:
    bodies = [request_body(i, args.steps) for i in range(offset, offset + args.requests)]
    gateway, url = start_gateway(code, backend_urls, args)
    try:
        before = process_stats(gateway.pid)
        result = load(client, url, bodies, concurrency, args.slow)
        after = process_stats(gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    cpu = {"gateway": after["cpu_s"] - before["cpu_s"], "client": result.pop("client_cpu_s")}
    shares = {f"{who}_cpu_ms_per_req": 1e3 * s / args.requests for who, s in cpu.items()}
    shares.update({f"{who}_cpu_pct": 100 * s / result["wall_s"] for who, s in cpu.items()})
    return {**result, "rss_mib": after["rss_mib"], "peak_rss_mib": after["peak_rss_mib"], **shares}


def median_run(runs: list[dict]) -> dict:
    """Each figure's median over the runs; error kinds summed."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "error_kinds"}
    kinds: dict[str, int] = {}
    for run in runs:
        for kind, n in run["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    return {**out, "error_kinds": kinds}


def start_backends(args, low: float, high: float) -> list[subprocess.Popen]:
    behaviours = ["ok"] * args.replicas + ([args.sick] if args.sick else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, __file__, "--_backend", str(low), str(high)]
    return [
        subprocess.Popen([*argv, behaviour], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for behaviour in behaviours
    ]


def print_table(args, low: float, high: float, medians: dict) -> None:
    sick = f" + 1 replica answering {args.sick}" if args.sick else ""
    timeout = "" if args.gateway_timeout is None else f" --timeout {args.gateway_timeout:g}"
    print(f"{args.requests} requests x {args.steps} steps; {args.replicas} replica(s) answering in U[{low * 1e3:g}, "
          f"{high * 1e3:g}] ms{sick}; gateway --concurrency {args.gateway_concurrency}{timeout}; median of "
          f"{args.repeats} run(s); CPU in ms per request and % of one core")  # fmt: skip
    slow = f">{args.slow:g}s"
    print(f"{'version':<18} {'client':<8} {'conc':>5} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {slow:>5} "
          f"{'errors':>6} {'RSS MiB':>7} {'gw ms':>6} {'gw %':>5} {'cl ms':>6} {'cl %':>5}  error kinds")  # fmt: skip
    for (name, client, c), m in medians.items():
        print(f"{name:<18} {client:<8} {c:>5} {m['rps']:>7.1f} {m['p50_ms']:>7.0f} {m['p99_ms']:>7.0f} "
              f"{m['slow']:>5.0f} {m['errors']:>6.0f} {m['rss_mib']:>7.0f} {m['gateway_cpu_ms_per_req']:>6.2f} "
              f"{m['gateway_cpu_pct']:>5.0f} {m['client_cpu_ms_per_req']:>6.2f} {m['client_cpu_pct']:>5.0f}  "
              f"{json.dumps(m['error_kinds']) if m['error_kinds'] else ''}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    parser.add_argument("--concurrency", default="64,256", help="client concurrency levels (default 64,256)")
    parser.add_argument("--steps", type=int, default=4, help="steps per response = PRM calls per request (default 4)")
    parser.add_argument("--latency", default="0.05,0.2", help="backend latency range, s (default 0.05,0.2)")
    parser.add_argument("--replicas", type=int, default=1, help="healthy PRM replicas (default 1)")
    parser.add_argument("--sick", choices=SICK, help="add one replica that answers 404, 500, or hangs")
    parser.add_argument("--gateway-concurrency", type=int, default=1024, help="the gateway's --concurrency per "
                        "replica (default 1024; `cdra prm serve`'s own default is 64)")  # fmt: skip
    parser.add_argument("--gateway-timeout", type=float, help="the gateway's --timeout, s (default: its own, 45); a "
                        "shorter one shows in a short run what a hung replica costs over many timeouts")  # fmt: skip
    parser.add_argument("--client", default="aiohttp", help="load generators, comma-separated: aiohttp (default), "
                        "httpx (what earlier versions of this script used)")  # fmt: skip
    parser.add_argument("--slow", type=float, default=10.0, help="count the requests slower than this, s (default "
                        "10: far above a healthy request here; a call to a hung replica waits the gateway's 45 s "
                        "--timeout)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="runs per (version, concurrency); the median is shown")
    parser.add_argument("--baseline", metavar="REF", help="also measure this version first (directory or git ref)")
    parser.add_argument("--_backend", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._backend:
        run_backend(float(args._backend[0]), float(args._backend[1]), args._backend[2])
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    low, high = (float(x) for x in args.latency.split(","))
    clients = [c.strip() for c in args.client.split(",")]
    if set(clients) - set(CLIENTS) or args.replicas < 1:
        parser.error(f"--client takes {', '.join(CLIENTS)}; --replicas must be >= 1")

    print(f"machine: {describe()}")
    backends = start_backends(args, low, high)
    results: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            urls = [b.stdout.readline().strip() for b in backends]
            versions = {"this": ROOT}
            if args.baseline:
                versions = {f"base {args.baseline}": code_dir(args.baseline, Path(scratch)), **versions}
            offset = 0
            for concurrency in levels:
                for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits all alike
                    for client in clients:
                        for name, code in versions.items():
                            run = run_one(code, urls, args, client, concurrency, offset)
                            offset += args.requests
                            results.setdefault((name, client, concurrency), []).append(run)
        finally:
            for backend in backends:
                backend.stdin.close()
                backend.wait(timeout=30)

    medians = {key: median_run(runs) for key, runs in results.items()}
    print_table(args, low, high, medians)
    summary = {
        "requests": args.requests, "steps": args.steps, "latency_s": [low, high], "replicas": args.replicas,
        "sick": args.sick, "gateway_concurrency": args.gateway_concurrency, "gateway_timeout": args.gateway_timeout,
        "slow_s": args.slow,
        "repeats": args.repeats,
        "results": [{"version": name, "client": client, "concurrency": c, **m} for (name, client, c), m in
                    medians.items()],
    }  # fmt: skip
    print(json.dumps({**summary, "machine": describe()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
