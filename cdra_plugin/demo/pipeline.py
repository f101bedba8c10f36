"""``cdra demo``: CDRA's main job end to end on a laptop, in under a minute, with no GPU and no network.

What a CDPA training step does with one prompt (paper Section 2.4, steps 2-4), then the evaluation and a short
learning run, with the project's real parts (seven stages, numbered as the demo prints them):

1. ``cdra data prepare`` turns the sample DeepPref trees (``cdra_plugin/demo/samples``) into training files;
2. a scripted stand-in for the Pers-GenPRM (``python -m cdra_plugin.stub serve --role table``: it answers each
   step with the critique and score the demo wrote for it, see ``cdra_plugin.stub.prm_table``) and the real
   step-wise gateway (``cdra prm serve``) start as their own processes on loopback;
3. a group of G responses to one RL prompt is scored through ``/get_reward`` as OpenRLHF's rollout workers call it
   (one request per response, the prompt + response text and the DeepPref label);
4. the step scores come back through the ``extra_logs`` carrier, every token gets the score of its step
   (``cdra_plugin.cdpa.align``) and the per-token advantages of Eq. 3 are computed
   (``cdra_plugin.cdpa.advantage``) and shown, each step of each response in its own colour;
5. a critique trace is written (``cdra_plugin.traces``) and shown as ``cdra traces show`` shows it;
6. the paper's evaluation (Sec. 3.1): ``cdra eval generate``, ``judge`` and ``report`` on the held-out split, with a
   scripted model and a scripted judge, the zero-shot baseline against the Fig. 14 policy prompt;
7. a tiny policy trained ``--learn-steps`` steps with CDPA's advantages through TRL on the CPU
   (``cdra_plugin.demo.learn``; skipped when TRL is not installed, or with ``--learn-steps 0``).

Every server it started is stopped on exit, Ctrl-C included; the outputs stay in ``--output``. It takes 40-46 s on 2
CPU cores (an AMD EPYC, shared), most of it in the learning run. On a GPU machine the same stages run at scale
through ``recipes/*.sh`` (README).

    cdra demo                      # outputs in ./cdra-demo
    cdra demo --output /tmp/demo --no-colour
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cdra_plugin import Failed, add_run_options

SAMPLES = Path(__file__).resolve().parent / "samples"  # package data: the demo runs from an installed wheel
MAX_STEPS = 8
QUESTION = "Which hotel should I pick for a weekend city break in Lisbon?"
# G = 4 responses to that scenario, each step with the critique and score a good PRM would give it (the demo's
# stand-in PRM answers from this table; a trained Pers-GenPRM would write its own).
GROUP = [
    [
        ("You sleep lightly and crowds make you anxious, so the hotel matters as a calm retreat more than as a "
         "central base.", 0.78, "Reframes the question around recovering from noise and crowds, which the "
         "preference implies but does not state."),
        ("Night noise outweighs star ratings: a courtyard room away from the nightlife of Bairro Alto protects "
         "your sleep.", 0.84, "Concrete and grounded in the light-sleeper preference; it names the area that "
         "would break it."),
        ("Pick a small boutique hotel in a quiet residential area such as Estrela or Lapa, ask for a high-floor "
         "courtyard room and check recent reviews for street noise.", 0.88, "An actionable answer that follows "
         "from both stated needs and lets the user check noise levels."),
    ],
    [
        ("Lisbon has hotels for every budget, so start from the price you want to pay.", 0.1,
         "Generic: nothing here uses the user's sleep or crowd concerns."),
        ("As a light sleeper you should ask for a room away from the lift and the street.", 0.62,
         "Picks up the sleep constraint, at the surface only."),
        ("Book a large hotel on Rua Augusta, in the middle of the old town, close to every sight.", -0.55,
         "Sends an anxious, light-sleeping user to the busiest pedestrian street of the city."),
    ],
    [
        ("A weekend is short, so the best hotel is the one nearest the nightlife.", -0.7,
         "Contradicts both stated preferences."),
        ("A lively hostel in Bairro Alto makes it easy to meet people late at night.", -0.85,
         "Crowds and late-night noise: exactly what this user avoids."),
        ("Choose the cheapest option and spend the savings on tours.", -0.2,
         "Ignores the user's needs; a weak, generic recommendation."),
    ],
    [
        ("Crowd anxiety suggests you want control over when you face busy places, not to avoid the city "
         "altogether.", 0.81, "A non-obvious, plausible inference about control that widens the options."),
        ("An apartment-hotel gives you a quiet base to rest in between sights you visit early, before the "
         "crowds.", 0.7, "Turns the inference into a plan that respects both sleep and crowd limits."),
        ("Choose an aparthotel in Campo de Ourique with double glazing and a kitchen, and see the centre in the "
         "early morning.", 0.76, "Specific and aligned; a sound final answer."),
    ],
]  # fmt: skip
STEP_COLOURS = ("\033[34m", "\033[35m", "\033[36m", "\033[33m")
RESET = "\033[0m"
SPARK = "▁▂▃▄▅▆▇█"


def add_parser(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run CDRA's main job on this laptop in under a minute: data, PRM gateway, CDPA advantages, trace, "
        "evaluation, a short learning run (no GPU, no network)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--output", default="cdra-demo", metavar="DIR", help="where the outputs go (default ./cdra-demo)"
    )
    demo.add_argument("--learn-steps", type=int, default=12, metavar="N",
                      help="steps of the last stage (TRL on a tiny policy; default 12, 0 skips it)")  # fmt: skip
    demo.add_argument("--no-colour", action="store_true", help="plain text even on a terminal (also: NO_COLOR=1)")
    add_run_options(demo)
    demo.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.output)
    colour = not args.no_colour and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    if args.learn_steps < 0:
        raise ValueError(f"--learn-steps must be >= 0, got {args.learn_steps}")
    try:
        return _stages(out, colour, args.learn_steps, progress=not args.no_progress)
    except KeyboardInterrupt:  # the servers were stopped on the way out (_Servers)
        raise KeyboardInterrupt(f"servers stopped, outputs so far in {out}") from None


def _stages(out: Path, colour: bool, learn_steps: int, progress: bool) -> int:
    print("CDRA demo: one CDPA step on one prompt, with the project's real parts (no GPU, no network)\n")
    group = _Group(_prepare(out / "data"))
    with _Servers(out / "logs") as servers:
        table = out / "prm_table.json"
        table.write_text(json.dumps(_score_table(), indent=1, ensure_ascii=False), encoding="utf-8")
        backend = servers.scripted("table", "--table", str(table))
        gateway = servers.gateway(backend, "table")
        print(f"[2/7] servers   scripted Pers-GenPRM on {backend} (answers from {table}), gateway `cdra prm serve` "
              f"on {gateway} (logs in {out / 'logs'}/)")  # fmt: skip
        replies = [_reward(gateway, group, response) for response in group.responses]
        print(f"[3/7] rewards   {len(replies)} responses scored through {gateway}/get_reward, one request each, as "
              "OpenRLHF's rollout workers send them")  # fmt: skip
        aligned, adv = _advantages(group, replies, colour)
        _trace(out / "traces.jsonl", gateway, group, replies, aligned, adv, colour)
        _evaluate(servers, out / "data" / "eval.jsonl", out / "eval", progress)
    if learn_steps:
        _learn(out / "learning_curve.json", learn_steps)
    print(f"\noutputs in {out}/: data/ (training files), logs/ (servers), traces.jsonl, eval/report/ (Table 1, "
          "radar.png), learning_curve.json\non a GPU machine the same stages run at scale through recipes/*.sh "
          "(README)")  # fmt: skip
    return 0


def _score_table() -> dict[str, list]:
    return {text: [score, critique] for steps in GROUP for text, score, critique in steps}


def _prepare(data_dir: Path) -> dict:
    from cdra_plugin.data.prepare import PrepareOptions, prepare_deeppref

    stats = prepare_deeppref(SAMPLES, data_dir, PrepareOptions(eval_size=2, overwrite=True, progress=False))
    rows = ", ".join(f"{name} {count}" for name, count in stats["outputs"].items())
    print(f"[1/7] data      cdra data prepare --input {SAMPLES} -> {data_dir}/ ({rows})")
    for name in ("rl_prompts.jsonl", "eval.jsonl"):
        for line in (data_dir / name).read_text(encoding="utf-8").splitlines():
            label = json.loads(json.loads(line)["label"])
            if label["question"] == QUESTION:
                return label
    raise Failed(f"no prepared row asks {QUESTION!r}; was {SAMPLES} changed?")


class _Servers:
    """Child processes on loopback (scripted models, the gateway), all stopped on exit whatever ends the ``with``."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> _Servers:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self

    def start(self, name: str, argv: list[str], health: str) -> None:
        """Run ``python -m argv...`` with its output in ``logs/<name>.log``; return once ``health`` answers 200."""
        from cdra_plugin.stub.processes import start_server

        try:
            proc = start_server([sys.executable, "-m", *argv], health, log=self.logs / f"{name}.log", timeout=60.0)
        except RuntimeError as failed:
            raise Failed(f"{name}: {failed}") from None
        self.procs.append(proc)

    def scripted(self, role: str, *extra: str) -> str:
        """A scripted OpenAI-compatible model (``python -m cdra_plugin.stub serve``); returns its base URL."""
        from cdra_plugin.stub.processes import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}/v1"
        argv = ["cdra_plugin.stub", "serve", role, "--role", role, "--port", str(port), *extra]
        self.start(role, argv, url + "/models")
        return url

    def gateway(self, backend: str, model: str) -> str:
        """``cdra prm serve`` over ``backend``; returns its URL."""
        from cdra_plugin.stub.processes import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = ["cdra_plugin.cli", "prm", "serve", "--backend", backend, "--model", model, "--port", str(port),
                "--max-steps", str(MAX_STEPS), "--failure-policy", "drop"]  # fmt: skip
        self.start("gateway", argv, url + "/health")
        return url

    def __exit__(self, *exc) -> None:
        from cdra_plugin.stub.processes import stop_servers

        stop_servers(self.procs)
        self.procs = []


class _Group:
    """The prompt as the policy sees it (Fig. 14 in the chat template) and the G responses, with the tokenizer."""

    def __init__(self, label: dict):
        from cdra_plugin.cdpa.prompts import policy_prompt
        from cdra_plugin.stub.tiny_model import build_tokenizer

        self.tokenizer = build_tokenizer()  # a small byte-level BPE tokenizer built offline, Qwen2-like
        messages = [{"role": "user", "content": policy_prompt(label["preference"], label["question"])}]
        self.prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        end = self.tokenizer.eos_token
        self.responses = ["\n".join(f"Step {k}: {text}" for k, (text, _, _) in enumerate(steps, 1)) + end
                          for steps in GROUP]  # fmt: skip
        self.label = label


def _reward(gateway: str, group: _Group, response: str) -> dict:
    """One ``/get_reward`` call, the body OpenRLHF's rollout worker sends for one finished sample."""
    import httpx

    body = {"query": [group.prompt + response], "prompts": [group.prompt], "labels": [json.dumps(group.label)]}
    reply = httpx.post(gateway + "/get_reward", json=body, timeout=60.0)
    reply.raise_for_status()
    return reply.json()


def _advantages(group: _Group, replies: list[dict], colour: bool):
    """Eq. 3 on the group: per-token rewards from the carried step scores, advantages shown step by step."""
    import torch

    from cdra_plugin.cdpa.advantage import cdpa_advantages
    from cdra_plugin.cdpa.carrier import decode_step_scores
    from cdra_plugin.cdpa.layout import token_layout

    # the host turns every extra_logs entry into a per-sample tensor; the experience maker reads them back
    info = {key: torch.tensor([r["extra_logs"][key][0] for r in replies]) for key in replies[0]["extra_logs"]}
    ids = [group.tokenizer(r, add_special_tokens=False)["input_ids"] for r in group.responses]
    layout = token_layout(group.tokenizer, ids, decode_step_scores(info))  # as in the trainers
    inputs = (layout.rewards, layout.valid, len(ids))
    adv, stats = cdpa_advantages(*inputs, step_ids=layout.step_ids)
    outcome, outcome_stats = cdpa_advantages(*inputs, mode="outcome", step_ids=layout.step_ids)
    scores, aligned = layout.step_scores.scores, layout.aligned
    print(f"[4/7] CDPA      per-token advantages, Eq. 3 (token_position: each token against the group's tokens at "
          f"its position); {stats['mean_steps']:.1f} steps per response\n")  # fmt: skip
    for i, row in enumerate(aligned):
        reward = replies[i]["rewards"][0]
        print(f"  response {i + 1}: gateway reward {reward:+.3f}, GRPO (outcome) advantage "
              f"{float(outcome[i, 0]):+.2f} on every token")  # fmt: skip
        for j in range(len(row.steps)):
            values = adv[i, (row.step_of_token == j).nonzero().flatten()]
            tint, end = (STEP_COLOURS[j % len(STEP_COLOURS)], RESET) if colour else ("", "")
            low, mean, high = float(values.min()), float(values.mean()), float(values.max())
            print(f"    {tint}step {j + 1}  score {float(scores[i, j]):+.2f}  advantage mean {mean:+.2f} "
                  f"[{low:+.2f}, {high:+.2f}]{end}")  # fmt: skip
            print(f"      {tint}{_spark(values.tolist())}{end}")
    print(f"\n  the {len(ids)} responses differ step by step: {stats['zero_adv_token_frac']:.0%} of tokens get a zero "
          f"advantage (lone or tied positions); outcome rewards leave {outcome_stats['zero_adv_group_frac']:.0%} "
          "of groups without any signal here")  # fmt: skip
    return aligned, adv


def _spark(values: list[float], low: float = -2.0, high: float = 2.0, width: int = 96) -> str:
    """One block character per token, its height the token's advantage on [low, high]."""
    cells = []
    for v in values[:width]:
        k = round((min(high, max(low, v)) - low) / (high - low) * (len(SPARK) - 1))
        cells.append(SPARK[k])
    return "".join(cells) + ("…" if len(values) > width else "")


def _trace(path: Path, gateway: str, group: _Group, replies: list[dict], aligned, adv, colour: bool) -> None:
    """One trace record per response, in the format ``cdra-train --cdpa.trace_path`` writes, then one shown."""
    import httpx

    from cdra_plugin.cdpa.prompts import strip_end_tokens
    from cdra_plugin.prm.protocol import first_critiques, score_request
    from cdra_plugin.traces import append_trace
    from cdra_plugin.traces.cli import load, render

    path.unlink(missing_ok=True)
    for i, (response, row) in enumerate(zip(group.responses, aligned, strict=True)):
        body = score_request([group.prompt + response], [group.prompt], [json.dumps(group.label)], cache_only=True)
        [result] = httpx.post(gateway + "/score", json=body, timeout=30.0).json()["results"]
        means = [float(adv[i, (row.step_of_token == j).nonzero().flatten()].mean()) for j in range(len(row.steps))]
        step_scores = replies[i]["extra_logs"]
        record = {
            "prompt_id": group.label.get("id"),
            "failed": bool(step_scores["cdpa_failed"][0]),
            "steps": [strip_end_tokens(step.body(row.text)) for step in row.steps],
            "scores": [step_scores[f"cdpa_step_{j:02d}"][0] for j in range(len(row.steps))],
            "mean_advantage": [round(m, 4) for m in means],
            "critiques": first_critiques(result),
        }
        append_trace(path, record, max_bytes=16 << 20)
    print(f"\n[5/7] trace     {path} (critiques read back from the gateway's cache, nothing scored twice); "
          f"`cdra traces show {path} --index 0`:\n")  # fmt: skip
    views, _ = load(str(path))
    print(render(views[0], colour))


def _evaluate(servers: _Servers, data: Path, out: Path, progress: bool) -> None:
    """The paper's evaluation (Sec. 3.1) of a zero-shot baseline against the Fig. 14 policy prompt, scripted."""
    from cdra_plugin.eval.generate import generate
    from cdra_plugin.eval.judge import judge
    from cdra_plugin.eval.report import report

    policy = servers.scripted("policy")
    judge_url = servers.scripted("judge")
    print(f"\n[6/7] eval      scripted model on {policy} and LLM judge on {judge_url}: `cdra eval generate`, "
          "`judge` and `report` on the held-out split\n")  # fmt: skip
    runs = {}
    for mode in ("zero-shot", "policy"):
        responses, judged = out / f"{mode}.jsonl", out / f"{mode}.judged.jsonl"
        for stale in (responses, judged, out / f"{mode}.judged.cache.jsonl"):
            stale.unlink(missing_ok=True)
        generate(data, responses, backend=policy, model="policy", mode=mode, n=4, temperature=1.0, seed=0,
                 progress=progress)  # fmt: skip
        judge(responses, judged, backend=judge_url, model="judge", progress=progress)
        runs[mode] = judged
    result = report(runs, out / "report")
    markdown = (out / "report" / "report.md").read_text(encoding="utf-8")
    table = markdown.split("## Table 1\n", 1)[1].split("\n## ", 1)[0].strip()
    print("\n".join("  " + line for line in table.splitlines()))
    best = max(result["runs"], key=lambda name: result["runs"][name]["acc_da"])
    print(f"\n  best by Acc_DA: {best}; the radar chart (Fig. 4) is {out / 'report' / 'radar.png'}")


def _learn(path: Path, steps: int) -> None:
    """A few CDPA steps with TRL on a tiny policy against the real gateway (``cdra_plugin.demo.learn``)."""
    try:
        from cdra_plugin.demo.learn import TARGET, learning_curve
    except ImportError as missing:
        print(f"\n[7/7] learn     skipped: {missing} (pip install 'cdra-plugin[trl]')")
        return
    from transformers.utils import logging as hf_logging

    print(f"\n[7/7] learn     a tiny policy trained {steps} steps with CDPA's Eq. 3 advantages (TRL, CPU) against the "
          f"real gateway; its scripted PRM scores a step +1 when it says {TARGET!r}, else -1\n")  # fmt: skip
    hf_logging.disable_progress_bar()
    curve = learning_curve("cdpa", steps=steps)
    path.write_text(json.dumps(curve._asdict(), indent=1), encoding="utf-8")
    for step, score in enumerate(curve.scores, 1):
        bar = "█" * round((score + 1) * 20)
        print(f"  step {step:2d}  mean step score {score:+.2f}  {bar}")
    print(f"\n  {curve.scores[0]:+.2f} -> {curve.scores[-1]:+.2f} in {curve.seconds:.0f} s ({path})")
