"""Benchmark: `cdra build` (the persona council, Appendix E) against simulated generator and evaluator servers.

Two simulated vLLM servers (``cdra_plugin.stub.ScriptedLLM`` with the scripted council: a fixed latency per
request, at most C requests generating at once, the rest queued) run in their own processes on loopback, one as the
generator and one as the evaluator. The real builder (``cdra_plugin.construct.runner.build``, two ``LLMClient``s with
concurrency C) builds N scenarios with the default tree (K=5, b=2, D=4, --prune-below 0.4, --keep-top 2) into a
temporary directory, with ``--parallel`` scenarios in flight:

- one scenario at a time (``--parallel 1``, the baseline: a level cannot start before the one above it is scored,
  so every level costs a full round trip), timed on ``--serial-scenarios`` and scaled to N;
- ``--parallel P`` for each P of ``--parallel`` (median of ``--repeats`` runs);
- bound: the busier server's requests x latency / C, the best any client can do against these servers.

The latency is scaled down from a real server's (seconds per thought or critique) to keep the run short; what is
reported is the ratio to the bound, which does not depend on that scale as long as the client's CPU time per call
stays far below it. The extrapolation to the paper's 3,000 scenarios uses the measured calls per scenario and
ratio with stated production latencies and concurrency.

    python scripts/bench_build.py                                   # 64 scenarios, latency 0.2 s, C = 16 (~1.5 min)
    python scripts/bench_build.py --latency 0.5 --concurrency 32 --scenarios 128

Output: a table, then one JSON line with the key figures (the last line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "council"
PAPER_SCENARIOS = 3000


def run_backend(latency: float, concurrency: int) -> None:
    """Child mode: serve the scripted council until stdin closes; print its base URL first."""
    from cdra_plugin.stub import ScriptedLLM
    from cdra_plugin.stub.council import ScriptedCouncil

    with ScriptedLLM(ScriptedCouncil(), model=MODEL, latency=latency, max_concurrency=concurrency) as llm:
        print(llm.base_url, flush=True)
        sys.stdin.read()


def start_backend(latency: float, concurrency: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, __file__, "--_backend", str(latency), str(concurrency)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def write_pairs(path: Path, n: int) -> Path:
    rows = [{"preference": f"I avoid crowds and plan carefully (user {i}).",
             "question": f"What should I do on a free weekend in city {i}?", "topic": f"T{i % 4}"}
            for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_once(urls: tuple[str, str], pairs: Path, n: int, parallel: int, concurrency: int) -> tuple[float, dict]:
    """(wall seconds, build_stats) of one build of the first ``n`` pairs into a fresh directory."""
    from cdra_plugin.construct.runner import BuildOptions, build
    from cdra_plugin.construct.tree import TreeShape
    from cdra_plugin.llm.client import LLMClient

    async def go():
        generator = LLMClient([urls[0]], MODEL, temperature=0.8, concurrency=concurrency)
        evaluator = LLMClient([urls[1]], MODEL, concurrency=concurrency)
        with tempfile.TemporaryDirectory() as out:
            options = BuildOptions(pairs, Path(out), TreeShape(), limit=n, parallel=parallel, progress=False)
            started = time.perf_counter()
            stats = await build(options, generator, evaluator)
            seconds = time.perf_counter() - started
        await generator.aclose()
        await evaluator.aclose()
        return seconds, stats

    return asyncio.run(go())


def requests_by_role(stats: dict) -> dict[str, int]:
    roles = {"generator": ("thought", "answer"), "evaluator": ("node_score", "path_score")}
    return {role: sum(stats["calls"][s]["attempts"] for s in stages) for role, stages in roles.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2, help="simulated seconds per request (both servers)")
    parser.add_argument("--concurrency", type=int, default=16, help="C: requests each server generates at once")
    parser.add_argument("--parallel", default="16,64", help="scenarios in flight, comma-separated (default 16,64)")
    parser.add_argument("--serial-scenarios", type=int, default=4, help="scenarios the --parallel 1 baseline times")
    parser.add_argument("--repeats", type=int, default=3, help="runs per --parallel value (median reported)")
    parser.add_argument(
        "--prod-latency-generator",
        type=float,
        default=3.0,
        help="extrapolation: seconds per generator request on a real server (default 3)",
    )
    parser.add_argument(
        "--prod-latency-evaluator",
        type=float,
        default=6.0,
        help="extrapolation: seconds per evaluator request (a critique, default 6)",
    )
    parser.add_argument("--prod-concurrency", type=int, default=64,
                        help="extrapolation: requests in flight per server (default 64)")  # fmt: skip
    parser.add_argument("--_backend", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._backend:
        run_backend(float(args._backend[0]), int(args._backend[1]))
        return 0
    print(f"machine: {describe()}")

    n, lat, c = args.scenarios, args.latency, args.concurrency
    servers = [start_backend(lat, c) for _ in range(2)]
    urls = (servers[0][1], servers[1][1])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pairs = write_pairs(Path(tmp) / "pairs.jsonl", n)
            n_serial = min(args.serial_scenarios, n)
            serial_s, _ = build_once(urls, pairs, n_serial, 1, c)
            runs = {}
            for parallel in (int(p) for p in args.parallel.split(",")):
                timed = [build_once(urls, pairs, n, parallel, c) for _ in range(args.repeats)]
                runs[parallel] = (statistics.median(t for t, _ in timed), timed[0][1])
    finally:
        for proc, _ in servers:
            proc.stdin.close()
            proc.wait(timeout=30)

    stats = next(iter(runs.values()))[1]
    assert stats["scenarios"]["built"] == n, stats["scenarios"]
    requests = requests_by_role(stats)
    per_scenario = {role: r / n for role, r in requests.items()}
    bound_s = max(requests.values()) * lat / c
    serial_scaled = serial_s * n / n_serial
    rows = [(f"--parallel 1 (one scenario at a time; timed on {n_serial}, scaled)", serial_scaled)]
    rows += [(f"--parallel {p}", seconds) for p, (seconds, _) in runs.items()]
    rows += [("bound: busier server's requests x latency / C", bound_s)]
    print(f"{n} scenarios, default tree (K=5, b=2, D=4, X=0.4, k=2): {per_scenario['generator']:.1f} generator + "
          f"{per_scenario['evaluator']:.1f} evaluator requests per scenario; latency {lat} s, C = {c} per server, "
          f"median of {args.repeats}\n")  # fmt: skip
    print(f"| {'run':<64} | {'wall s':>8} | {'s/scenario':>10} | {'requests/s':>10} | {'vs bound':>8} |")
    print(f"|{'-' * 66}|{'-' * 10}|{'-' * 12}|{'-' * 12}|{'-' * 10}|")
    total = sum(requests.values())
    for name, seconds in rows:
        print(f"| {name:<64} | {seconds:8.2f} | {seconds / n:10.3f} | {total / seconds:10.1f} | "
              f"{bound_s / seconds:8.1%} |")  # fmt: skip
    best_p, (best_s, _) = min(runs.items(), key=lambda item: item[1][0])
    efficiency = bound_s / best_s
    pc = args.prod_concurrency
    prod_bound = PAPER_SCENARIOS * max(per_scenario["generator"] * args.prod_latency_generator,
                                       per_scenario["evaluator"] * args.prod_latency_evaluator) / pc  # fmt: skip
    prod_s = prod_bound / efficiency
    paper_requests = PAPER_SCENARIOS * total / n
    print(f"\nextrapolation: {PAPER_SCENARIOS} scenarios x {total / n:.0f} requests = {paper_requests:,.0f} requests; "
          f"at {args.prod_latency_generator:g} s per generator and {args.prod_latency_evaluator:g} s per evaluator "
          f"request, {pc} in flight on one server each, bound {prod_bound / 3600:.2f} h, at the measured "
          f"{efficiency:.0%} of it {prod_s / 3600:.2f} h (halve with two replicas per role)")  # fmt: skip
    figures = {
        "scenarios": n, "latency_s": lat, "concurrency": c, "repeats": args.repeats,
        "generator_requests_per_scenario": round(per_scenario["generator"], 2),
        "evaluator_requests_per_scenario": round(per_scenario["evaluator"], 2),
        "serial_s": round(serial_scaled, 3), "serial_timed_scenarios": n_serial,
        "parallel_s": {str(p): round(s, 3) for p, (s, _) in runs.items()}, "bound_s": round(bound_s, 3),
        "best_parallel": best_p, "efficiency_vs_bound": round(efficiency, 4),
        "speedup_vs_serial": round(serial_scaled / best_s, 2),
        "paper_scenarios": PAPER_SCENARIOS, "paper_requests": round(paper_requests),
        "paper_hours_one_server_per_role": round(prod_s / 3600, 3),
    }  # fmt: skip
    print(json.dumps({**figures, "machine": describe()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
