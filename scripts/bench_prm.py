"""Benchmark: step-wise PRM scoring through the gateway against the serial per-step approach of the reference code.

A simulated vLLM server (``cdra_plugin.stub``: fixed latency per request, at most C requests generating at
once, the rest queued) runs in its own process on loopback; so does the real gateway (``cdra prm serve``). Then:

- serial: the paper's reference approach, one PRM call at a time, response after response, step after step
  (OpenAI client straight to the backend), timed on ``--serial-responses`` responses and scaled to all of them
  (it is linear: every call costs the same latency);
- gateway: all responses posted to ``/get_reward`` at once, one request per response as OpenRLHF's rollout workers
  do; the gateway fans each out into its per-step calls. Run with ``--concurrency C`` (the headline figures) and
  ``2C`` (calls queue in the server, so a slot never waits for the gateway to send the next call);
- bound: requests x latency / C, the best any client can do against this server.

The gateway's CPU time (user + system of its process, psutil) over the timed runs, divided by the PRM calls, is
``cpu_ms_per_call``: what one gateway process costs per call, so 1000 / cpu_ms_per_call is about the most calls/s
it can drive on one core. The gateway runs with its result cache off and ``--repeats`` times per setting; the
median is reported.

Prompt tokens per response are counted on the exact prompts the gateway sends (Fig. 15 per step, approximate
tokens = words + punctuation marks), with the part a warm prefix cache (vLLM ``--enable-prefix-caching``) would
not hold: every prompt starts with the same instructions, and the step-j prompt repeats step j-1's prompt up to
its previous steps.

    python scripts/bench_prm.py                         # 256 responses x 5 steps, latency 0.2 s, C = 64 (about 90 s)
    python scripts/bench_prm.py --serial-responses 256  # time the serial approach in full (about 5 min)

Output: a table, then one JSON line with the key figures (the last line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import describe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "scripted-prm"


def run_backend(latency: float, concurrency: int) -> None:
    """Child mode: serve the simulated PRM until stdin closes; print its base URL first."""
    from cdra_plugin.stub import ScriptedLLM, score_text

    with ScriptedLLM(
        lambda request: score_text(0.5), model=MODEL, latency=latency, max_concurrency=concurrency
    ) as llm:
        print(llm.base_url, flush=True)
        sys.stdin.read()


def make_responses(n: int, steps: int) -> list[tuple[str, str, str]]:
    """Distinct (preference, question, response) triples, ``steps`` steps of about 40 words each."""
    filler = "weighing what the user said against what they likely value but did not say, and what to avoid"
    out = []
    for i in range(n):
        pref = f"I prefer quiet places and plan carefully (user {i})."
        question = f"What should I do on a free weekend in city number {i}?"
        body = "\n".join(
            f"Step {j}: For user {i}, consideration {j} is about {filler}; so option {i * steps + j} fits best."
            for j in range(1, steps + 1)
        )
        out.append((pref, question, body))
    return out


def start_backend(latency: float, concurrency: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, __file__, "--_backend", str(latency), str(concurrency)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def start_gateway(backend_url: str, concurrency: int) -> tuple[subprocess.Popen, str]:
    from cdra_plugin.stub.processes import free_port, start_server

    port = free_port()
    cmd = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", backend_url, "--model", MODEL,
           "--port", str(port), "--concurrency", str(concurrency), "--log-level", "warning",
           "--cache-mb", "0"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return start_server(cmd, url + "/health", env={**os.environ, "PYTHONPATH": str(ROOT)}), url


def serial(backend_url: str, triples, scorer) -> float:
    """The reference approach: one blocking call per step, in order. Returns seconds."""
    import openai

    from cdra_plugin.cdpa.prompts import parse_score

    client = openai.OpenAI(base_url=backend_url, api_key="EMPTY", max_retries=0)
    started = time.perf_counter()
    for pref, question, response in triples:
        for _, _, prompt in scorer.step_prompts(pref, question, response):
            out = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=1024
            )
            assert parse_score(out.choices[0].message.content) is not None
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def through_gateway(url: str, triples, pid: int) -> tuple[float, float, list[float]]:
    """All responses at once, one /get_reward request each. Returns (seconds, gateway CPU seconds, rewards)."""
    import aiohttp

    def body(pref, question, response):
        label = json.dumps({"preference": pref, "question": question})
        return {"query": ["<prompt>" + response], "prompts": ["<prompt>"], "labels": [label]}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def post(payload):
            async with session.post(url + "/get_reward", json=payload) as response:
                response.raise_for_status()
                return (await response.json())["rewards"][0]

        await post(body("warm-up", "warm-up", "Step 1: warm up the connection pool"))
        started, cpu_started = time.perf_counter(), cpu_seconds(pid)
        rewards = await asyncio.gather(*(post(body(*t)) for t in triples))
        return time.perf_counter() - started, cpu_seconds(pid) - cpu_started, rewards


def token_counts(triples, scorer) -> dict[str, float]:
    from cdra_plugin.cdpa.prompts import PRM_TEMPLATE
    from cdra_plugin.stub import approx_tokens

    head = PRM_TEMPLATE.split("{preference}")[0]  # the same in every prompt: cached after the first request
    sent = new = 0
    for pref, question, response in triples:
        previous = head
        for _, _, prompt in scorer.step_prompts(pref, question, response):
            common = len(os.path.commonprefix([previous, prompt]))
            sent += approx_tokens(prompt)
            new += approx_tokens(prompt[common:])
            previous = prompt
    return {"sent": sent / len(triples), "new": new / len(triples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.2, help="simulated seconds per PRM request")
    parser.add_argument("--concurrency", type=int, default=64, help="C: requests the backend generates at once")
    parser.add_argument("--serial-responses", type=int, default=32, help="responses the serial run times")
    parser.add_argument("--repeats", type=int, default=3, help="gateway runs per setting (the median is reported)")
    parser.add_argument("--_backend", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._backend:
        run_backend(float(args._backend[0]), int(args._backend[1]))
        return 0
    print(f"machine: {describe()}")

    from cdra_plugin.llm.client import LLMClient
    from cdra_plugin.prm.scoring import StepScorer

    triples = make_responses(args.responses, args.steps)
    scorer = StepScorer(LLMClient(["http://127.0.0.1:9/v1"], MODEL))  # only builds prompts here
    calls = args.responses * args.steps
    backend, backend_url = start_backend(args.latency, args.concurrency)
    try:
        gateway_s, gateway_cpu_s = {}, {}
        for concurrency in (args.concurrency, 2 * args.concurrency):
            gateway, url = start_gateway(backend_url, concurrency)
            try:  # the median of the repeats, each on the same gateway (its cache is keyed by content: off here)
                runs = [asyncio.run(through_gateway(url, triples, gateway.pid)) for _ in range(args.repeats)]
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)
            for _, _, rewards in runs:
                assert rewards == [0.5] * args.responses, "unexpected rewards from the gateway"  # every step 0.5
            gateway_s[concurrency] = statistics.median(r[0] for r in runs)
            gateway_cpu_s[concurrency] = statistics.median(r[1] for r in runs)
        n_serial = min(args.serial_responses, args.responses)
        serial_measured = serial(backend_url, triples[:n_serial], scorer)
    finally:
        backend.stdin.close()
        backend.wait(timeout=30)

    serial_s = serial_measured * args.responses / n_serial
    bound_s = calls * args.latency / args.concurrency
    tokens = token_counts(triples, scorer)
    scaled = "" if n_serial == args.responses else f" (timed on {n_serial}, scaled)"
    c = args.concurrency
    rows = [
        ("serial per-step (reference)" + scaled, serial_s, None),
        (f"gateway --concurrency {c} (= C)", gateway_s[c], gateway_cpu_s[c]),
        (f"gateway --concurrency {2 * c} (2C: server queue never empty)", gateway_s[2 * c], gateway_cpu_s[2 * c]),
        ("bound: calls x latency / C", bound_s, None),
    ]
    print(f"{args.responses} responses x {args.steps} steps = {calls} PRM calls, latency {args.latency} s, "
          f"backend concurrency C = {c}; gateway figures: median of {args.repeats} run(s)\n")  # fmt: skip
    print(f"| {'approach':<58} | {'wall s':>8} | {'calls/s':>8} | {'vs serial':>9} | {'vs bound':>8} | "
          f"{'gateway CPU ms/call':>19} |")  # fmt: skip
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 21}|")
    for name, seconds, cpu in rows:
        cpu_ms = "" if cpu is None else f"{cpu / calls * 1000:.3f}"
        print(f"| {name:<58} | {seconds:8.2f} | {calls / seconds:8.1f} | {serial_s / seconds:8.1f}x | "
              f"{bound_s / seconds:8.1%} | {cpu_ms:>19} |")  # fmt: skip
    print(f"\nprompt tokens sent per response: {tokens['sent']:.0f} (approx.; same prompts in both approaches), "
          f"not in a warm prefix cache: {tokens['new']:.0f}")  # fmt: skip
    figures = {
        "responses": args.responses, "steps": args.steps, "latency_s": args.latency, "concurrency": c,
        "serial_s": round(serial_s, 3), "serial_timed_responses": n_serial, "gateway_s": round(gateway_s[c], 3),
        "bound_s": round(bound_s, 3), "speedup_vs_serial": round(serial_s / gateway_s[c], 2),
        "efficiency_vs_bound": round(bound_s / gateway_s[c], 4),
        "efficiency_vs_bound_gateway_2c": round(bound_s / gateway_s[2 * c], 4),
        "cpu_ms_per_call": round(gateway_cpu_s[c] / calls * 1000, 3),
        "cpu_ms_per_call_2c": round(gateway_cpu_s[2 * c] / calls * 1000, 3),
        "prompt_tokens_per_response": round(tokens["sent"]),
        "uncached_prompt_tokens_per_response": round(tokens["new"]),
    }  # fmt: skip
    print(json.dumps({**figures, "machine": describe()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
