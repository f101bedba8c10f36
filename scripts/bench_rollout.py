"""Benchmark: one CDPA rollout step with the real PRM gateway in the loop, scored post hoc and streaming: how many
PRM replicas does each need, and how long after generation does the last reward come?

Post hoc is OpenRLHF's way: its vLLM actors post each sample to the remote reward model right after it finishes, so
PRM scoring overlaps generation and what is left after the last sample adds wall time. Streaming is the plugin's
(``cdra-train --cdpa.stream_scoring``, ``cdra_plugin.openrlhf.stream``): each step goes to the gateway as soon as the
next one has begun, and the final ``/get_reward`` pays only for the rest. This script replays one rollout step in both
modes, on the same workload, on a virtual clock ``--time-scale`` (1.5) times faster than real time (every time it
prints is simulated seconds), with three processes on loopback:

- a simulated **policy**: B prompts x G samples on ``--policy-engines`` vLLM engines. Each engine is OpenRLHF's own
  rollout actor (``RolloutRayActor``'s class: ``generate_responses`` and ``generate``, no Ray) around a simulated
  vLLM engine (``sim.rollout``) that streams each sample's tokens (the tiny tokenizer's) as vLLM ``RequestOutput``s,
  ``--stream-stride`` tokens at a time, when the engine's decoding schedule has them out (an engine decodes its
  samples together). Its executor is OpenRLHF's ``SingleTurnAgentExecutor`` (post hoc; it reads the final output
  only, so only that one is made) or the plugin's streaming ``AgentExecutor`` (streaming): the code that runs in
  training, each posting ``/get_reward`` as OpenRLHF does;
- the real gateway, ``cdra prm serve`` (``python -m cdra_plugin.cli``), over R PRM replicas, at most C calls in flight
  on each (``--concurrency C``); every repeat's labels are new, so no result is cached across runs;
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

For each mode it prints, and puts in its JSON last line (post hoc: the top-level keys; streaming: ``streaming``):
- ``overhead_ratio``: rollout + scoring (the last reward returned) over generation alone (the last sample
  finished), both measured in the same run, at the recommended R (the median of ``--repeats`` rollouts);
- ``tail_floor_ratio``: the ratio with unlimited replicas, each sample (post hoc) or step (streaming) scored on an
  idle replica the moment it is complete; the last sample's last critiques set it, and no scheduler or R gets below
  it. ``tail_critique_tokens``: the critique that sets it;
- ``recommended_replicas``: the smallest R whose overhead is at most the target (``--target`` 1.15 post hoc,
  ``--stream-target`` 1.06 streaming), or, when the tail floor is above it, at most floor + ``--tail-margin``
  (``sized_for``); found by running R upwards;
- ``lower_bound_replicas`` (the same for both): the PRM's work at its best (decode at C sequences, prefill with a
  perfect prefix cache) spread perfectly over the generation window; ``arrival_bound_replicas``: the same work, each
  sample's (step's) share arriving when it is complete, done by the ``sized_for`` deadline;
- post hoc, ``ideal_dispatcher_replicas``: what an ideal in-process dispatcher needs on the same simulated replicas (no
  HTTP; each response's steps together, on arrival, to the replica with the fewest sequences): the yardstick for
  the gateway's scheduling; ``critique_tokens_per_policy_token``;
- streaming, ``early_step_fraction``: the share of steps the final ``/get_reward`` found scored or in flight.

Each table row also shows the gateway's CPU seconds per rollout (``gateway CPU s``: real seconds, what streaming's
early calls cost it) and ``lag``: how much later than its schedule the simulated policy finished (measured
generation over the modelled one). It runs in this process, on this machine's CPU; above a few percent the machine
was too busy for the replay, and the row is not to be trusted (streaming loads the gateway while the policy runs:
at ``--time-scale 3`` the lag reached 27% on this 2-core VM shared with other work; at 1.5 it stays at 0).

    python scripts/bench_rollout.py                          # the paper's setting (about 9 min on 2 cores)
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
import signal
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from machine import describe

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
    step_starts: tuple[int, ...] = ()  # token offset where each step after the first begins (its marker line)
    engine: int = 0
    finish_s: float = 0.0  # virtual time the policy finishes it
    ready_s: tuple[float, ...] = ()  # virtual time each step is complete: the next one has content, or the end
    work_s: tuple[float, ...] = ()  # PRM GPU seconds to score each step, at best
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
            response = f"(sample {p}.{g})\n" + "\n".join(steps)
            samples.append(Sample(p, preference, question, response, tokens, tuple(cuts)))
    return samples


def schedule_policy(samples: list[Sample], spec: EngineSpec, engines: int, prompt_tokens: int) -> dict[int, list]:
    """Prompt p's G samples run on engine p % engines, all started at 0 after the prefill of that engine's prompts,
    decoding together. Returns each engine's clock: when its running samples have ``t`` tokens out, for every t; sets
    each sample's finish time and the time each of its steps is complete (the next step's marker and a word out)."""
    clocks = {}
    for e in range(engines):
        batch = sorted((s for s in samples if s.prompt_index % engines == e), key=lambda s: s.tokens)
        prompts = len({s.prompt_index for s in batch})
        clock = [prompts * prompt_tokens * spec.prefill_s_per_token]
        for i, sample in enumerate(batch):
            step = spec.step_time(len(batch) - i)
            clock += [clock[-1] + step * k for k in range(1, sample.tokens - len(clock) + 2)]
        clocks[e] = clock
        for sample in batch:
            sample.engine, sample.finish_s = e, clock[sample.tokens]
            sample.ready_s = (*(clock[min(sample.tokens, cut + 4)] for cut in sample.step_starts), sample.finish_s)
    return clocks


def prm_work(samples: list[Sample], spec: EngineSpec, concurrency: int) -> dict:
    """What the PRM must do at its best: decode at ``concurrency`` sequences, each response's prompts prefilled
    once on one replica with the template already cached (GPU seconds per step, in ``work_s``); critique and
    prefill token counts; ``floor_s``: when the last reward could return with unlimited replicas, each sample (post
    hoc) or step (streaming) scored on an idle replica the moment it is complete, and the critique that sets it."""
    from cdra_plugin.cdpa.prompts import PRM_TEMPLATE
    from cdra_plugin.llm.client import LLMClient
    from cdra_plugin.prm.scoring import StepScorer
    from cdra_plugin.stub import approx_tokens

    scorer = StepScorer(LLMClient(["http://127.0.0.1:9/v1"], MODEL))  # builds the gateway's prompts only
    head = PRM_TEMPLATE.split("{preference}")[0]
    per_token = spec.step_time(concurrency) / concurrency
    critique = prefill = 0
    floor = {"post_hoc": (0.0, 0), "streaming": (0.0, 0)}  # (virtual time the last reward returns, its critique)
    for sample in samples:
        previous, work = head, []
        prompts = [prompt for _, _, prompt in scorer.step_prompts(sample.preference, sample.question, sample.response)]
        if len(prompts) != len(sample.ready_s):
            raise RuntimeError(f"{len(prompts)} steps where the workload wrote {len(sample.ready_s)}")
        sample.prm_prompts = tuple(prompts)
        for prompt, ready in zip(prompts, sample.ready_s, strict=True):
            new = approx_tokens(prompt[len(os.path.commonprefix([previous, prompt])) :])
            out = critique_tokens(prompt)
            critique, prefill = critique + out, prefill + new
            work.append(out * per_token + new * spec.prefill_s_per_token)
            prefill_s = new * spec.prefill_s_per_token
            together = (sample.finish_s + prefill_s + out * spec.step_time(len(prompts)), out)  # all at the end
            alone = (ready + prefill_s + out * spec.step_time(1), out)  # each step when complete
            floor = {"post_hoc": max(floor["post_hoc"], together), "streaming": max(floor["streaming"], alone)}
            previous = prompt
        sample.work_s = tuple(work)
    total = sum(sum(s.work_s) for s in samples)
    return {"critique_tokens": critique, "prefill_tokens": prefill, "gpu_s": total, "floor": floor}


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


def arrival_bound(work: list[tuple[float, float]], deadline: float) -> float:
    """Replicas a perfect scheduler needs to finish by ``deadline`` given when the work arrives (``(arrival,
    GPU seconds)`` items): the work arriving at or after t must fit in (deadline - t), for every t."""
    ordered = sorted(work)
    remaining, bound = sum(w for _, w in ordered), 0.0
    for arrival, w in ordered:
        bound = max(bound, remaining / (deadline - arrival))
        remaining -= w
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
             "--port", str(port), "--concurrency", str(concurrency), "--log-level", "warning", *gateway_args],
            self.url + "/health", env=env,
        )  # fmt: skip

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.sim_url + "/stats", timeout=10).json()

    def steps_found(self) -> dict[str, float]:
        """The gateway's final-call step lookups so far, by result (``cdra_prm_step_lookups_total``)."""
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=10).text
        found = dict.fromkeys(("hit", "joined", "miss"), 0.0)
        for result in found:
            line = f'cdra_prm_step_lookups_total{{call="final",result="{result}"}} '
            found[result] = sum(float(x.split(" ")[-1]) for x in text.splitlines() if x.startswith(line))
        return found

    def gateway_cpu_s(self) -> float:
        """CPU seconds the gateway process has used so far."""
        import psutil

        times = psutil.Process(self.gateway.pid).cpu_times()
        return times.user + times.system

    def close(self) -> None:
        self.gateway.terminate()
        self.gateway.wait(timeout=30)
        self.sim.stdin.close()
        self.sim.wait(timeout=30)


class Policy:
    """The simulated policy of one rollout: each sample's tokens, prompt and response ids, prepared once."""

    def __init__(self, args, samples: list[Sample], clocks: dict[int, list]):
        from sim.rollout import detokenized

        from cdra_plugin.cdpa.prompts import policy_prompt
        from cdra_plugin.stub.tiny_model import build_tokenizer

        self.args, self.samples = args, samples
        self.tokenizer = build_tokenizer()
        self.prompts = {s.prompt_index: policy_prompt(s.preference, s.question) for s in samples}
        self.prompt_ids = {
            p: tuple(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for p, t in self.prompts.items()
        }
        self.tokens, self.times, self.by_response = [], [], {}  # per sample: ids, wall seconds of each token
        for i, sample in enumerate(samples):
            ids, ends = detokenized(self.tokenizer, list(self.prompt_ids[sample.prompt_index]), sample.response)
            self.tokens.append((ids, ends))
            self.by_response[(*ids, self.tokenizer.eos_token_id)] = i
            clock = clocks[sample.engine]
            positions = (round(k * sample.tokens / (len(ids) + 1)) for k in range(1, len(ids) + 2))
            self.times.append([clock[t] / args.time_scale for t in positions])

        # what a rollout runs, imported and exercised once here, not in the first timed rollout
        import openrlhf.utils.agent  # noqa: F401
        import vllm  # noqa: F401

        import cdra_plugin.openrlhf.stream  # noqa: F401

        self.tokenizer.decode(self.tokenizer(self.prompts[0], return_tensors="pt")["input_ids"][0].tolist())

    async def rollout(self, url: str, streaming: bool, tag: int) -> dict:
        """One rollout: every sample generated and rewarded by the mode's executor; virtual seconds per sample."""
        from openrlhf.utils.agent import SingleTurnAgentExecutor
        from sim.rollout import Script, ScriptedEngine, rollout_actor
        from vllm import SamplingParams

        from cdra_plugin.openrlhf.stream import AgentExecutor

        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.5
        scripts = [Script(s.response, times=times, t0=t0, tokens=tokens)
                   for s, times, tokens in zip(self.samples, self.times, self.tokens, strict=True)]  # fmt: skip
        queues = defaultdict(list)  # the scripts of each prompt, in the order its samples are generated
        for i, sample in enumerate(self.samples):
            queues[self.prompt_ids[sample.prompt_index]].append(scripts[i])
        returned, by_response = [0.0] * len(self.samples), self.by_response

        def script(prompt_ids):
            return queues[tuple(prompt_ids)].pop(0)

        class Timed:  # the rollout actor's executor, timed: when each sample's execute returns
            def __init__(self, executor):
                self.executor = executor

            async def execute(self, *args, **kwargs):
                out = await self.executor.execute(*args, **kwargs)
                i = by_response[tuple(out["observation_tokens"][out["action_ranges"][0][0] :])]
                if out["reward"] is None or not math.isfinite(out["reward"][0]):
                    raise RuntimeError(f"sample {i}: no reward ({out['reward']})")
                returned[i] = loop.time()
                return out

        executors, calls = [], []
        params = SamplingParams(temperature=1.0, max_tokens=None, skip_special_tokens=False)
        for e in range(self.args.policy_engines):
            # the host's executor reads the final output only: post hoc, the engine yields that alone (no CPU spent
            # on partial outputs nobody reads, which this machine's two cores would take from the PRM's simulation)
            stride = self.args.stream_stride if streaming else 1 << 30
            actor = rollout_actor(ScriptedEngine(self.tokenizer, script, stride=stride))
            executor = (AgentExecutor if streaming else SingleTurnAgentExecutor)(url + "/get_reward")
            actor.executor = Timed(executor)
            executors.append(executor)
            for p in range(e, self.args.prompts, self.args.policy_engines):
                sample = next(s for s in self.samples if s.prompt_index == p)
                label = json.dumps({"preference": f"{sample.preference} (run {tag})", "question": sample.question})
                calls.append(actor.generate_responses(self.prompts[p], label, params, 1 << 20, self.tokenizer,
                                                      num_samples=self.args.samples))  # fmt: skip
        try:
            await asyncio.gather(*calls)
        finally:
            for executor in executors:
                if streaming:
                    await executor.aclose()
        scale = self.args.time_scale
        return {
            "posted": [(s.finished - t0) * scale for s in scripts],
            "returned": [(r - t0) * scale for r in returned],
        }


def run_replicas(args, policy: Policy, replicas: int, streaming: bool, tags) -> dict:
    """``--repeats`` rollouts on one deployment (PRM caches emptied in between); the run with the median ratio."""
    import httpx

    deployment = Deployment(replicas, args.prm_concurrency, args.time_scale, args.gateway_args.split())
    runs = []
    try:
        for _ in range(args.repeats):
            httpx.post(deployment.sim_url + "/reset", timeout=10).raise_for_status()
            before, cpu = deployment.steps_found(), deployment.gateway_cpu_s()
            times = asyncio.run(policy.rollout(deployment.url, streaming, next(tags)))
            after = deployment.steps_found()
            found = {k: after[k] - before[k] for k in after}
            run = summarize(replicas, times, deployment.stats())
            run["early_step_fraction"] = (found["hit"] + found["joined"]) / max(1.0, sum(found.values()))
            run["gateway_cpu_s"] = deployment.gateway_cpu_s() - cpu  # real seconds, whatever the time scale
            runs.append(run)
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
    add("--replicas", help="comma-separated replica counts to run instead of the search (both modes)")
    add("--modes", default="post_hoc,streaming", help="which modes to run (default both: post_hoc,streaming)")
    add("--target", type=float, default=1.15, help="post-hoc overhead ratio to meet (default 1.15)")
    add("--stream-target", type=float, default=1.06, help="streaming overhead ratio to meet (default 1.06)")
    add("--tail-margin", type=float, default=0.05, help="above the tail floor, size for floor + this (default 0.05)")
    add("--time-scale", type=float, default=1.5, help="simulated seconds per wall second (default 1.5; lower it "
        "when the tables show a lag)")  # fmt: skip
    add("--stream-stride", type=int, default=32, help="tokens per streamed output of the simulated vLLM (default 32)")
    add("--max-runs", type=int, default=4, help="replica counts the search tries at most (default 4)")
    add("--repeats", type=int, default=3, help="rollouts per replica count, the median is kept (default 3)")
    add("--seed", type=int, default=0)
    add("--gateway-args", default="", help="extra `cdra prm serve` options, e.g. '--k 2 --temperature 1'")
    add("--_sim", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def plan(args) -> dict:
    """The workload, generation alone, the PRM's work, each mode's tail floor, goal and arrival bound, the ideal R."""
    spec = EngineSpec(max_seqs=args.prm_concurrency)
    samples = make_workload(args, random.Random(args.seed))
    clocks = schedule_policy(samples, spec, args.policy_engines, args.policy_prompt_tokens)
    generation = max(s.finish_s for s in samples)
    work = prm_work(samples, spec, args.prm_concurrency)
    arrivals = {"post_hoc": [(s.finish_s, sum(s.work_s)) for s in samples],
                "streaming": [item for s in samples for item in zip(s.ready_s, s.work_s, strict=True)]}  # fmt: skip
    modes = {}
    for mode, target in (("post_hoc", args.target), ("streaming", args.stream_target)):
        end, tokens = work["floor"][mode]
        goal = max(target, round(end / generation + args.tail_margin, 3))
        bound = arrival_bound(arrivals[mode], goal * generation)
        modes[mode] = {"target": target, "floor": end / generation, "floor_critique": tokens, "goal": goal,
                       "arrival_bound": bound}  # fmt: skip
    ideal = {}  # replicas -> overhead ratio with the ideal in-process dispatcher (post hoc)
    for replicas in range(1, 8 * math.ceil(modes["post_hoc"]["arrival_bound"]) + 8):
        ideal[replicas] = ideal_end(samples, spec, replicas) / generation
        if ideal[replicas] <= modes["post_hoc"]["goal"]:
            break
    return {
        "spec": spec, "samples": samples, "clocks": clocks, "generation": generation, "work": work, "modes": modes,
        "window_bound": work["gpu_s"] / generation, "ideal": ideal,
        "ideal_replicas": replicas if ideal[replicas] <= modes["post_hoc"]["goal"] else None,
        "policy_tokens": sum(s.tokens for s in samples),
    }  # fmt: skip


def print_plan(args, p: dict) -> None:
    samples, tokens, generation, work = p["samples"], p["policy_tokens"], p["generation"], p["work"]
    print(f"{len(samples)} samples ({args.prompts} prompts x {args.samples}) on {args.policy_engines} policy "
          f"engine(s): {tokens} tokens (mean {tokens / len(samples):.0f}, max {max(s.tokens for s in samples)}), "
          f"generation alone {generation:.1f} s ({tokens / generation:,.0f} tokens/s)")  # fmt: skip
    print(f"PRM work: {work['critique_tokens']} critique tokens ({work['critique_tokens'] / tokens:.2f} per policy "
          f"token), {work['prefill_tokens']} prompt tokens to prefill: {work['gpu_s']:.1f} GPU-s at "
          f"C = {args.prm_concurrency}; {p['window_bound']:.2f} replicas over the generation window")  # fmt: skip
    for mode, m in p["modes"].items():
        when = "each sample scored when it ends" if mode == "post_hoc" else "each step scored when it is complete"
        print(f"{mode}: tail floor {m['floor']:.3f}x ({when}, unlimited replicas; the last reward waits for a "
              f"{m['floor_critique']}-token critique)" + (f"; {m['target']}x is below it, so R is sized for "
              f"{m['goal']}x (floor + {args.tail_margin})" if m["goal"] != m["target"] else "") +
              f"; arrival bound {m['arrival_bound']:.2f} replicas")  # fmt: skip
        if m["floor"] > m["target"]:  # what would meet the target: the tail after the last token must shrink
            tail, allowed = (m["floor"] - 1) * generation, (m["target"] - 1) * generation
            print(f"  {m['target']}x needs the last reward {allowed:.2f} s after the last token, not {tail:.2f} s: "
                  f"a last critique of <= {allowed / p['spec'].step_time(1):.0f} tokens at "
                  f"{p['spec'].step_time(1) * 1000:.2f} ms a token, or one sequence decoded {tail / allowed:.1f}x "
                  f"faster (speculative decoding, tensor parallelism), or a generation window of "
                  f">= {tail / (m['target'] - 1):.0f} s per rollout step")  # fmt: skip
    print(f"post hoc, an ideal in-process dispatcher on the same simulated replicas needs {p['ideal_replicas']}")
    print(f"time scale {args.time_scale:g}: every time below is simulated seconds\n")


def search(args, p: dict, policy: Policy, mode: str, tags) -> tuple[list[dict], dict | None]:
    """Run the replica counts (given, or upwards from one below the first plausible) until one meets the goal."""
    m = p["modes"][mode]
    if args.replicas:
        candidates = [int(r) for r in args.replicas.split(",")]
    else:
        plausible = (
            p["ideal_replicas"] if mode == "post_hoc" and p["ideal_replicas"] else math.ceil(m["arrival_bound"])
        )
        first = max(1, plausible - 1)
        candidates = list(range(first, first + args.max_runs))
    print(f"{mode} (goal {m['goal']}x):")
    print(
        f"| {'R':>3} | {'gen s':>6} | {'end s':>6} | {'ratio':>6} | {'ideal':>6} | {'p50 score s':>11} | "
        f"{'max score s':>11} | {'PRM busy':>8} | {'prefix hit':>10} | {'early':>5} | {'PRM calls':>9} | "
        f"{'gateway CPU s':>13} | {'lag':>5} |"
    )
    print("|" + "|".join("-" * w for w in (5, 8, 8, 8, 8, 13, 13, 10, 12, 7, 11, 15, 7)) + "|")
    runs, recommended = [], None
    for replicas in candidates:
        run = run_replicas(args, policy, replicas, mode == "streaming", tags)
        if mode == "post_hoc":
            ideal = p["ideal"].get(replicas) or ideal_end(p["samples"], p["spec"], replicas) / p["generation"]
            run["ideal_ratio"] = ideal
        run["policy_lag"] = run["generation_s"] / p["generation"] - 1  # above a few %: the machine was too busy
        runs.append(run)
        ideal = f"{run['ideal_ratio']:6.3f}" if "ideal_ratio" in run else f"{'':>6}"
        print(f"| {replicas:>3} | {run['generation_s']:6.1f} | {run['end_s']:6.1f} | {run['overhead_ratio']:6.3f} | "
              f"{ideal} | {run['scoring_p50_s']:11.2f} | {run['scoring_max_s']:11.2f} | {run['prm_busy']:8.1%} | "
              f"{run['prefix_cache_hit']:10.1%} | {run['early_step_fraction']:5.0%} | {run['prm_calls']:>9} | "
              f"{run['gateway_cpu_s']:13.2f} | {run['policy_lag']:5.1%} |",
              flush=True)  # fmt: skip
        if recommended is None and run["overhead_ratio"] <= m["goal"]:
            recommended = run
            if not args.replicas:
                break
    return runs, recommended


def report(args, p: dict, mode: str, runs: list[dict], recommended: dict | None) -> dict:
    m, shown = p["modes"][mode], recommended or runs[-1]
    print(f"\n{mode}: timeline at R = {shown['replicas']} (samples generated / rewards returned by t):")
    for t, generated, rewarded in timeline(shown):
        print(f"  t = {t:6.1f} s  {generated:4d} / {rewarded:4d}  {'#' * round(40 * rewarded / len(p['samples']))}")
    r = recommended["replicas"] if recommended else None
    if r is None:
        print(f"{mode}: no replica count tried reaches {m['goal']}x\n")
    else:
        print(f"{mode}: recommended R = {r} PRM replicas (C = {args.prm_concurrency}) for {args.policy_engines} "
              f"policy engine(s): {recommended['overhead_ratio']:.3f}x generation alone; {r / p['window_bound']:.2f}x "
              f"the window bound, {r / m['arrival_bound']:.2f}x the arrival bound\n")  # fmt: skip
    return {
        "tail_floor_ratio": round(m["floor"], 4), "tail_critique_tokens": m["floor_critique"], "target": m["target"],
        "sized_for": m["goal"], "target_reachable": m["floor"] <= m["target"], "recommended_replicas": r,
        "overhead_ratio": round(shown["overhead_ratio"], 4), "arrival_bound_replicas": round(m["arrival_bound"], 3),
        "recommended_over_lower_bound": round(r / p["window_bound"], 3) if r else None,
        "early_step_fraction": round(shown["early_step_fraction"], 4),
        "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in run.items() if k != "times"}
                 for run in runs],
    }  # fmt: skip


def main() -> int:
    args = parse_args()
    if args._sim:
        run_sim(int(args._sim[0]), int(args._sim[1]), float(args._sim[2]))
        return 0
    print(f"machine: {describe()}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the deployment's finally stops its servers
    modes = args.modes.split(",")
    if not set(modes) <= {"post_hoc", "streaming"}:
        raise SystemExit(f"--modes: post_hoc, streaming or both, got {args.modes!r}")
    p = plan(args)
    print_plan(args, p)
    policy, tags = Policy(args, p["samples"], p["clocks"]), iter(range(1 << 30))
    results = {mode: report(args, p, mode, *search(args, p, policy, mode, tags)) for mode in modes}
    out = {
        "prompts": args.prompts, "samples_per_prompt": args.samples, "policy_engines": args.policy_engines,
        "prm_concurrency": args.prm_concurrency, "time_scale": args.time_scale, "stream_stride": args.stream_stride,
        "policy_tokens": p["policy_tokens"], "policy_tokens_per_s": round(p["policy_tokens"] / p["generation"]),
        "generation_s_model": round(p["generation"], 2),
        "critique_tokens_per_policy_token": round(p["work"]["critique_tokens"] / p["policy_tokens"], 3),
        "prm_gpu_s": round(p["work"]["gpu_s"], 2), "lower_bound_replicas": round(p["window_bound"], 3),
        "ideal_dispatcher_replicas": p["ideal_replicas"],
    }  # fmt: skip
    if "post_hoc" in results:
        out.update({k: v for k, v in results["post_hoc"].items() if k != "early_step_fraction"})
    if "streaming" in results:
        out["streaming"] = results["streaming"]
    print(json.dumps({**out, "machine": describe()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
