"""Benchmark: one CDPA rollout step with the real PRM gateway in the loop; how many PRM replicas does it need?

OpenRLHF's vLLM actors post each sample to the remote reward model right after it finishes generating, so PRM
scoring overlaps generation and only what is left after the last sample adds wall time. This script replays one
rollout step on a virtual clock, ``--time-scale`` (3) times faster than real time (every time it prints is
simulated seconds), with three processes on loopback:

- a simulated **policy**: B prompts x G samples on ``--policy-engines`` vLLM engines; each engine decodes its
  samples together and posts each one to ``/get_reward`` the moment it finishes, one request per sample on a new
  connection, as OpenRLHF does;
- the real gateway, ``cdra prm serve`` (``python -m cdra_plugin.cli``, result cache off), over R PRM replicas, at
  most C calls in flight on each (``--concurrency C``);
- a simulated **PRM**: R replicas of ``sim.vllm`` (continuous batching of up to C sequences,
  prefill, prefix caching).

Workload (defaults: the paper's setting, Sec. 3.1: Qwen2.5-7B policy and PRM, G = 5, 32 prompts per step):
response lengths are log-normal, median ``--median-tokens`` 950 and sigma 0.35 (mean about 1,010 tokens), cut at
``--max-tokens`` 2048 (``--rollout.max_new_tokens``); one step per ~200 tokens (about 5 per response); critiques
of 200-400 tokens (uniform); the PRM prompts are the gateway's own (Fig. 15); a policy prompt is 700 tokens.

Engine timing, the same for policy and PRM (a 7B model in bf16 on one H100 SXM, vLLM with CUDA graphs), from
public figures:
- a decode step takes 7.0 ms + 0.06 ms per running sequence. Reading 15.2 GB of weights at 3.35 TB/s takes
  4.5 ms; vLLM's CI latency benchmark (Llama-3.1-8B, batch 8, 128 tokens) runs at 6.5 ms a token on an H200,
  about 7.5 ms on the H100's lower bandwidth; under a ShareGPT load (~130 sequences) a 9B model on one H100 runs
  at 15 ms a token (GPUStack performance lab, vLLM). So 256 sequences decode 11,400 tokens/s;
- prefill costs 0.03 ms a token (33k tokens/s; the same lab's prompt-heavy profile serves 32k tokens/s with a 9B
  model), and pauses decoding meanwhile;
- the prefix cache holds 60,000 blocks of 64 characters (~1M tokens: 57 GB of KV at 57 KB per Qwen2.5-7B token).

It prints, and puts in its JSON last line:
- ``overhead_ratio``: rollout + scoring (the last reward returned) over generation alone (the last sample
  finished), both measured in the same run, at the recommended R (the median of ``--repeats`` rollouts);
- ``critique_tokens_per_policy_token``;
- ``tail_floor_ratio``: the ratio with unlimited replicas, each sample scored on an idle replica the moment it
  finishes; the last sample's critiques set it, and no scheduler or R gets below it;
- ``recommended_replicas``: the smallest R whose overhead is at most ``--target`` (1.15), or, when the tail floor
  is above the target, at most floor + ``--tail-margin`` (``sized_for``); found by running R upwards;
- ``lower_bound_replicas``: the PRM's work at its best (decode at C sequences, prefill with a perfect prefix cache)
  spread perfectly over the generation window; ``arrival_bound_replicas``: the same work, each sample's share
  arriving when it finishes, done by the ``sized_for`` deadline; ``ideal_dispatcher_replicas``: what an ideal
  in-process dispatcher needs on the same simulated replicas (no HTTP; each response's steps together, on arrival,
  to the replica with the fewest sequences): the yardstick for the gateway's scheduling.

    python scripts/bench_rollout.py                          # the paper's setting (about 1 min on 2 cores)
    python scripts/bench_rollout.py --replicas 2,3,4,5       # these replica counts, no search
    python scripts/bench_rollout.py --prm-concurrency 64     # the gateway's default --concurrency
    python scripts/bench_rollout.py --policy-engines 8 --prompts 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.vllm import EngineSpec, critique_tokens  # noqa: E402

MODEL = "simulated-prm"
WORDS = "user values quiet time plans trips carefully avoids crowds budget family food walks museums".split()


@dataclass
class Sample:
    prompt_index: int
    preference: str
    question: str
    response: str
    tokens: int
    finish_s: float = 0.0  # virtual time the policy finishes it
    work_s: float = 0.0  # PRM GPU seconds to score it, at best
    prm_prompts: tuple[str, ...] = ()  # the gateway's Fig. 15 prompts, one per step


def make_workload(args, rng: random.Random) -> list[Sample]:
    """B prompts x G responses with log-normal lengths, one step per ~``step_tokens`` tokens."""
    samples = []
    for p in range(args.prompts):
        preference = f"I am user {p}; " + " ".join(rng.choice(WORDS) for _ in range(30))
        question = f"Question {p}: " + " ".join(rng.choice(WORDS) for _ in range(20)) + "?"
        for g in range(args.samples):
            tokens = min(args.max_tokens, max(50, round(rng.lognormvariate(math.log(args.median_tokens), 0.35))))
            n_steps = max(1, round(tokens / args.step_tokens))
            cuts = sorted(rng.sample(range(1, tokens), n_steps - 1)) if n_steps > 1 else []
            sizes = [b - a for a, b in zip([0, *cuts], [*cuts, tokens], strict=True)]
            # "Step k:" is 3 approximate tokens; each word is one.
            steps = [f"Step {k}: " + " ".join(rng.choice(WORDS) for _ in range(max(1, size - 3)))
                     for k, size in enumerate(sizes, start=1)]  # fmt: skip
            samples.append(Sample(p, preference, question, f"(sample {p}.{g})\n" + "\n".join(steps), tokens))
    return samples


def schedule_policy(samples: list[Sample], spec: EngineSpec, engines: int, prompt_tokens: int) -> float:
    """Set each sample's finish time: prompt p's G samples run on engine p % engines, all started at 0 after the
    prefill of that engine's prompts, decoding together. Returns the generation time (the last finish)."""
    for e in range(engines):
        batch = sorted((s for s in samples if s.prompt_index % engines == e), key=lambda s: s.tokens)
        prompts = len({s.prompt_index for s in batch})
        t, done = prompts * prompt_tokens * spec.prefill_s_per_token, 0
        for i, sample in enumerate(batch):
            t += (sample.tokens - done) * spec.step_time(len(batch) - i)
            done = sample.tokens
            sample.finish_s = t
    return max(s.finish_s for s in samples)


def prm_work(samples: list[Sample], spec: EngineSpec, concurrency: int) -> dict:
    """What the PRM must do at its best: decode at ``concurrency`` sequences, each response's prompts prefilled
    once on one replica with the template already cached (GPU seconds per sample, in ``work_s``); critique and
    prefill token counts; ``floor_s``: when the last reward could return with unlimited replicas (each sample
    scored on an idle replica the moment it finishes)."""
    from cdra_plugin.cdpa.prompts import PRM_TEMPLATE
    from cdra_plugin.llm.client import LLMClient
    from cdra_plugin.prm.scoring import StepScorer
    from cdra_plugin.stub import approx_tokens

    scorer = StepScorer(LLMClient(["http://127.0.0.1:9/v1"], MODEL))  # builds the gateway's prompts only
    head = PRM_TEMPLATE.split("{preference}")[0]
    per_token = spec.step_time(concurrency) / concurrency
    critique = prefill = 0
    floor = 0.0
    for sample in samples:
        previous, slowest, work = head, 0.0, 0.0
        prompts = [prompt for _, _, prompt in scorer.step_prompts(sample.preference, sample.question, sample.response)]
        sample.prm_prompts = tuple(prompts)
        for prompt in prompts:
            new = approx_tokens(prompt[len(os.path.commonprefix([previous, prompt])) :])
            out = critique_tokens(prompt)
            critique, prefill = critique + out, prefill + new
            work += out * per_token + new * spec.prefill_s_per_token
            slowest = max(slowest, new * spec.prefill_s_per_token + out * spec.step_time(len(prompts)))
            previous = prompt
        sample.work_s = work
        floor = max(floor, sample.finish_s + slowest)
    total = sum(s.work_s for s in samples)
    return {"critique_tokens": critique, "prefill_tokens": prefill, "gpu_s": total, "floor_s": floor}


def ideal_end(samples: list[Sample], spec: EngineSpec, replicas: int) -> float:
    """When the last reward would return with an ideal dispatcher: the same simulated replicas driven on a virtual
    clock in-process (no HTTP, no gateway), every response's steps sent together, the moment it finishes, to the
    replica with the fewest sequences (so its prompts share that replica's prefix cache)."""
    from sim.vllm import Replica

    clock, wakes = [0.0], [None] * replicas

    def waker(i):
        return lambda t: wakes.__setitem__(i, t)

    async def simulate() -> float:
        reps = [Replica(spec, lambda: clock[0], waker(i)) for i in range(replicas)]
        arrivals = sorted(samples, key=lambda s: s.finish_s)
        futures = []
        while arrivals or any(w is not None for w in wakes):
            wake = min((w for w in wakes if w is not None), default=math.inf)
            if arrivals and arrivals[0].finish_s < wake:
                sample = arrivals.pop(0)
                clock[0] = sample.finish_s
                target = min(reps, key=lambda r: len(r.running) + len(r.prefilling) + len(r.waiting))
                futures += [target.submit(p, critique_tokens(p)) for p in sample.prm_prompts]
            else:
                clock[0] = wake
                for i, w in enumerate(wakes):
                    if w is not None and w <= wake:
                        reps[i].tick()
        return max(f.result() for f in futures)

    return asyncio.run(simulate())


def arrival_bound(samples: list[Sample], deadline: float) -> float:
    """Replicas a perfect scheduler needs to finish by ``deadline`` given when the work arrives: the work of the
    samples finishing at or after t must fit in (deadline - t), for every t."""
    ordered = sorted(samples, key=lambda s: s.finish_s)
    remaining, bound = sum(s.work_s for s in ordered), 0.0
    for sample in ordered:
        bound = max(bound, remaining / (deadline - sample.finish_s))
        remaining -= sample.work_s
    return bound


# -- processes ---------------------------------------------------------------------------------------------------
def run_sim(replicas: int, concurrency: int, scale: float) -> None:
    """Child mode: serve the simulated PRM replicas until stdin closes; print the base URL first."""
    from sim.vllm import SimulatedVLLM

    from cdra_plugin.stub.server import BackgroundServer

    sim = SimulatedVLLM(EngineSpec(max_seqs=concurrency), replicas, time_scale=scale, model=MODEL)
    with BackgroundServer(sim.app()) as server:
        print(server.url, flush=True)
        sys.stdin.read()


class Deployment:
    """The simulated PRM (R replicas) and the real gateway over them, as subprocesses."""

    def __init__(self, replicas: int, concurrency: int, scale: float, gateway_args: list[str]):
        from cdra_plugin.stub.processes import free_port, start_server

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, __file__, "--_sim", str(replicas), str(concurrency), str(scale)]
        self.sim = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.sim_url = self.sim.stdout.readline().strip()
        backends = ",".join(f"{self.sim_url}/r{i}/v1" for i in range(replicas))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.gateway = start_server(
            [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", backends, "--model", MODEL,
             "--port", str(port), "--concurrency", str(concurrency), "--log-level", "warning",
             "--cache-mb", "0", *gateway_args],
            self.url + "/health", env=env,
        )  # fmt: skip

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.sim_url + "/stats", timeout=10).json()

    def close(self) -> None:
        self.gateway.terminate()
        self.gateway.wait(timeout=30)
        self.sim.stdin.close()
        self.sim.wait(timeout=30)


async def rollout(url: str, samples: list[Sample], scale: float, policy_prompt) -> dict:
    """Post every sample at its finish time (wall = virtual / scale) and wait for every reward; virtual seconds."""
    import aiohttp

    loop = asyncio.get_running_loop()
    posted, returned = [0.0] * len(samples), [0.0] * len(samples)
    start = loop.time() + 0.2

    async def one(i: int, sample: Sample) -> None:
        await asyncio.sleep(max(0.0, start + sample.finish_s / scale - loop.time()))
        prompt = policy_prompt(sample.preference, sample.question)
        label = json.dumps({"preference": sample.preference, "question": sample.question})
        body = {"query": [prompt + sample.response], "prompts": [prompt], "labels": [label]}
        posted[i] = (loop.time() - start) * scale
        # OpenRLHF opens a session (and a connection) per reward request.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
            async with session.post(url + "/get_reward", json=body) as response:
                response.raise_for_status()
                reward = (await response.json())["rewards"][0]
        returned[i] = (loop.time() - start) * scale
        if not math.isfinite(reward):
            raise RuntimeError(f"sample {i}: reward {reward}")

    await asyncio.gather(*(one(i, s) for i, s in enumerate(samples)))
    return {"posted": posted, "returned": returned}


def run_replicas(args, samples, replicas: int, gateway_args: list[str]) -> dict:
    """``--repeats`` rollouts on one deployment (PRM caches emptied in between); the run with the median ratio."""
    import httpx

    from cdra_plugin.cdpa.prompts import policy_prompt

    deployment = Deployment(replicas, args.prm_concurrency, args.time_scale, gateway_args)
    runs = []
    try:
        for _ in range(args.repeats):
            httpx.post(deployment.sim_url + "/reset", timeout=10).raise_for_status()
            times = asyncio.run(rollout(deployment.url, samples, args.time_scale, policy_prompt))
            runs.append(summarize(replicas, times, deployment.stats()))
    finally:
        deployment.close()
    return sorted(runs, key=lambda r: r["overhead_ratio"])[len(runs) // 2]


def summarize(replicas: int, times: dict, stats: dict) -> dict:
    generation, end = max(times["posted"]), max(times["returned"])
    latency = [r - p for p, r in zip(times["posted"], times["returned"], strict=True)]
    reps = stats["replicas"]
    return {
        "replicas": replicas,
        "generation_s": generation,
        "end_s": end,
        "overhead_ratio": end / generation,
        "scoring_p50_s": statistics.median(latency),
        "scoring_max_s": max(latency),
        "prm_busy": sum(r["busy_s"] for r in reps) / (replicas * end),
        "prefix_cache_hit": sum(r["cached_tokens"] for r in reps) / max(1, sum(r["prompt_tokens"] for r in reps)),
        "prm_calls": sum(r["requests"] for r in reps),
        "times": times,
    }


def timeline(run: dict, bins: int = 10) -> list[tuple[float, int, int]]:
    """(t, samples generated by t, rewards returned by t) at ``bins`` even steps up to the end."""
    posted, returned = run["times"]["posted"], run["times"]["returned"]
    points = []
    for k in range(1, bins + 1):
        t = run["end_s"] * k / bins
        points.append((t, sum(p <= t for p in posted), sum(r <= t + 1e-9 for r in returned)))
    return points


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--prompts", type=int, default=32, help="B: prompts per rollout step (default 32)")
    add("--samples", type=int, default=5, help="G: samples per prompt (default 5)")
    add("--median-tokens", type=float, default=950, help="median response length (default 950)")
    add("--max-tokens", type=int, default=2048, help="response length cap (default 2048)")
    add("--step-tokens", type=int, default=200, help="tokens per step, on average (default 200)")
    add("--policy-engines", type=int, default=4, help="policy vLLM engines, one GPU each (default 4)")
    add("--policy-prompt-tokens", type=int, default=700, help="policy prompt length (default 700)")
    add("--prm-concurrency", type=int, default=256, help="C: sequences per PRM replica, the gateway's "
        "--concurrency (default 256)")  # fmt: skip
    add("--replicas", help="comma-separated replica counts to run instead of the search")
    add("--target", type=float, default=1.15, help="overhead ratio to meet (default 1.15)")
    add("--tail-margin", type=float, default=0.05, help="above the tail floor, size for floor + this (default 0.05)")
    add("--time-scale", type=float, default=3.0, help="simulated seconds per wall second (default 3)")
    add("--max-runs", type=int, default=4, help="replica counts the search tries at most (default 4)")
    add("--repeats", type=int, default=3, help="rollouts per replica count, the median is kept (default 3)")
    add("--seed", type=int, default=0)
    add("--gateway-args", default="", help="extra `cdra prm serve` options, e.g. '--k 2 --temperature 1'")
    add("--_sim", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def plan(args) -> dict:
    """The workload, generation alone, the PRM's work, the tail floor, the goal, the bounds, the ideal R."""
    spec = EngineSpec(max_seqs=args.prm_concurrency)
    samples = make_workload(args, random.Random(args.seed))
    generation = schedule_policy(samples, spec, args.policy_engines, args.policy_prompt_tokens)
    work = prm_work(samples, spec, args.prm_concurrency)
    floor = work["floor_s"] / generation
    goal = max(args.target, round(floor + args.tail_margin, 3))
    bound = arrival_bound(samples, goal * generation)
    ideal = {}  # replicas -> overhead ratio with the ideal in-process dispatcher
    for replicas in range(1, 8 * math.ceil(bound) + 8):
        ideal[replicas] = ideal_end(samples, spec, replicas) / generation
        if ideal[replicas] <= goal:
            break
    return {
        "spec": spec, "samples": samples, "generation": generation, "work": work, "floor": floor, "goal": goal,
        "window_bound": work["gpu_s"] / generation, "arrival_bound": bound, "ideal": ideal,
        "ideal_replicas": replicas if ideal[replicas] <= goal else None,
        "policy_tokens": sum(s.tokens for s in samples),
    }  # fmt: skip


def print_plan(args, p: dict) -> None:
    samples, tokens, generation, work = p["samples"], p["policy_tokens"], p["generation"], p["work"]
    print(f"{len(samples)} samples ({args.prompts} prompts x {args.samples}) on {args.policy_engines} policy "
          f"engine(s): {tokens} tokens (mean {tokens / len(samples):.0f}, max {max(s.tokens for s in samples)}), "
          f"generation alone {generation:.1f} s ({tokens / generation:,.0f} tokens/s)")  # fmt: skip
    print(f"PRM work: {work['critique_tokens']} critique tokens ({work['critique_tokens'] / tokens:.2f} per policy "
          f"token), {work['prefill_tokens']} prompt tokens to prefill: {work['gpu_s']:.1f} GPU-s at "
          f"C = {args.prm_concurrency}")  # fmt: skip
    above = p["goal"] != args.target
    print(f"tail floor {p['floor']:.3f}x: with unlimited replicas the last sample's critiques still start when it "
          "ends" + (f"; {args.target}x is below it, so R is sized for {p['goal']}x (floor + {args.tail_margin})"
                    if above else ""))  # fmt: skip
    print(f"lower bounds for {p['goal']}x: {p['window_bound']:.2f} replicas (the work spread over the generation "
          f"window), {p['arrival_bound']:.2f} (given when samples finish); an ideal in-process dispatcher on the "
          f"same simulated replicas needs {p['ideal_replicas']}")  # fmt: skip
    print(f"time scale {args.time_scale:g}: every time below is simulated seconds\n")


def search(args, p: dict) -> tuple[list[dict], dict | None]:
    """Run the replica counts (given, or upwards from one below the ideal dispatcher's) until one meets the goal."""
    if args.replicas:
        candidates = [int(r) for r in args.replicas.split(",")]
    else:
        first = max(1, (p["ideal_replicas"] or math.ceil(p["arrival_bound"])) - 1)
        candidates = list(range(first, first + args.max_runs))
    print(f"| {'R':>3} | {'gen s':>6} | {'end s':>6} | {'ratio':>6} | {'ideal':>6} | {'p50 score s':>11} | "
          f"{'max score s':>11} | {'PRM busy':>8} | {'prefix hit':>10} |")  # fmt: skip
    print("|" + "|".join("-" * w for w in (5, 8, 8, 8, 8, 13, 13, 10, 12)) + "|")
    runs, recommended = [], None
    for replicas in candidates:
        run = run_replicas(args, p["samples"], replicas, args.gateway_args.split())
        run["ideal_ratio"] = p["ideal"].get(replicas) or ideal_end(p["samples"], p["spec"], replicas) / p["generation"]
        runs.append(run)
        print(f"| {replicas:>3} | {run['generation_s']:6.1f} | {run['end_s']:6.1f} | {run['overhead_ratio']:6.3f} | "
              f"{run['ideal_ratio']:6.3f} | {run['scoring_p50_s']:11.2f} | {run['scoring_max_s']:11.2f} | "
              f"{run['prm_busy']:8.1%} | {run['prefix_cache_hit']:10.1%} |", flush=True)  # fmt: skip
        if recommended is None and run["overhead_ratio"] <= p["goal"]:
            recommended = run
            if not args.replicas:
                break
    return runs, recommended


def report(args, p: dict, runs: list[dict], recommended: dict | None) -> dict:
    shown = recommended or runs[-1]
    print(f"\ntimeline at R = {shown['replicas']} (samples generated / rewards returned by t):")
    for t, generated, rewarded in timeline(shown):
        print(f"  t = {t:6.1f} s  {generated:4d} / {rewarded:4d}  {'#' * round(40 * rewarded / len(p['samples']))}")
    r = recommended["replicas"] if recommended else None
    if r is None:
        print(f"\nno replica count tried reaches {p['goal']}x")
    else:
        print(f"\nrecommended: R = {r} PRM replicas (C = {args.prm_concurrency}) for {args.policy_engines} policy "
              f"engine(s): {recommended['overhead_ratio']:.3f}x generation alone; {r / p['window_bound']:.2f}x the "
              f"window bound, {r / p['arrival_bound']:.2f}x the arrival bound; ideal dispatcher: "
              f"{p['ideal_replicas']}")  # fmt: skip
    return {
        "prompts": args.prompts, "samples_per_prompt": args.samples, "policy_engines": args.policy_engines,
        "prm_concurrency": args.prm_concurrency, "time_scale": args.time_scale,
        "policy_tokens": p["policy_tokens"], "policy_tokens_per_s": round(p["policy_tokens"] / p["generation"]),
        "generation_s_model": round(p["generation"], 2),
        "critique_tokens_per_policy_token": round(p["work"]["critique_tokens"] / p["policy_tokens"], 3),
        "prm_gpu_s": round(p["work"]["gpu_s"], 2),
        "tail_floor_ratio": round(p["floor"], 4), "target": args.target, "sized_for": p["goal"],
        "target_reachable": p["floor"] <= args.target,
        "recommended_replicas": r, "overhead_ratio": round(shown["overhead_ratio"], 4),
        "lower_bound_replicas": round(p["window_bound"], 3),
        "arrival_bound_replicas": round(p["arrival_bound"], 3),
        "ideal_dispatcher_replicas": p["ideal_replicas"],
        "recommended_over_lower_bound": round(r / p["window_bound"], 3) if r else None,
        "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in run.items() if k != "times"}
                 for run in runs],
    }  # fmt: skip


def main() -> int:
    args = parse_args()
    if args._sim:
        run_sim(int(args._sim[0]), int(args._sim[1]), float(args._sim[2]))
        return 0
    p = plan(args)
    print_plan(args, p)
    runs, recommended = search(args, p)
    print(json.dumps(report(args, p, runs, recommended)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
