"""A tiny policy learning from CDPA (or outcome-level GRPO) on the CPU, through TRL and the real PRM gateway.

Runs ``cdra_plugin.demo.learn.learning_curve`` (see its docstring: a tiny Qwen2 taught the step format, then GRPO
steps of 4 prompts x G = 5 completions against a scripted PRM that scores a step +1 when it mentions "quiet", -1
otherwise) for each seed, and prints the mean PRM step score per step, then one JSON object as the last line:
``mode``, ``steps``, ``score_first`` / ``score_last`` (mean step score on [-1, 1] over the first / last five steps,
averaged over seeds), ``steps_to_target`` (first step whose five-step moving average of the seed-averaged curve
reaches ``--target``; null if none), ``steps_to_target_per_seed`` (the same on each seed's own curve),
``steps_per_answer_last`` (steps per completion over the last five steps: the score must not rise by writing fewer
steps), ``seeds``, ``seconds``.

    python scripts/learn_trl.py --mode cdpa                              # one seed, 40 steps: ~1 min on 2 cores
    python scripts/learn_trl.py --mode outcome --seeds 5 --save out/outcome.json
    python scripts/learn_trl.py --plot curves.png out/cdpa.json out/outcome.json out/min_form.json  # README figure
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from cdra_plugin import quiet_third_party

quiet_third_party()  # before the imports below load torch, TRL and DeepSpeed
from tqdm import tqdm  # noqa: E402

from cdra_plugin.demo.learn import MODES, learning_curve, moving_average, steps_to_reach  # noqa: E402

COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")


def train(args) -> dict:
    started = time.perf_counter()
    runs = [
        learning_curve(args.mode, args.steps, seed=seed, learning_rate=args.lr)
        for seed in tqdm(range(args.seeds), desc=f"{args.mode} seeds", unit="seed")
    ]
    curves = [run.scores for run in runs]
    mean = [statistics.fmean(step) for step in zip(*curves, strict=True)]
    n_steps = [statistics.fmean(step) for step in zip(*(run.num_steps for run in runs), strict=True)]
    print(f"{'step':>4} {'mean step score':>15} {'5-step average':>14} {'steps/answer':>12}")
    for step, row in enumerate(zip(mean, moving_average(mean), n_steps, strict=True), start=1):
        print(f"{step:>4} {row[0]:>15.3f} {row[1]:>14.3f} {row[2]:>12.2f}")
    summary = {
        "mode": args.mode,
        "steps": args.steps,
        "score_first": round(statistics.fmean(mean[:5]), 4),
        "score_last": round(statistics.fmean(mean[-5:]), 4),
        "target": args.target,
        "steps_to_target": steps_to_reach(mean, args.target),
        "steps_to_target_per_seed": [steps_to_reach(curve, args.target) for curve in curves],
        "steps_per_answer_last": round(statistics.fmean(n_steps[-5:]), 2),
        "seeds": args.seeds,
        "learning_rate": args.lr,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        num_steps = [run.num_steps for run in runs]
        args.save.write_text(json.dumps({**summary, "curves": curves, "num_steps": num_steps}) + "\n")
    return summary


def plot(out: Path, files: list[Path]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(f.read_text()) for f in files]
    fig, (score_ax, steps_ax) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    if len(runs) > len(COLOURS):
        raise SystemExit(f"--plot draws at most {len(COLOURS)} runs, got {len(runs)}")
    for run, colour in zip(runs, COLOURS, strict=False):
        steps = range(1, run["steps"] + 1)
        for ax, key in ((score_ax, "curves"), (steps_ax, "num_steps")):
            for curve in run[key]:  # each seed, faint; the seeds' mean as a 5-step moving average, bold
                ax.plot(steps, curve, color=colour, alpha=0.15, linewidth=0.8)
            mean = [statistics.fmean(s) for s in zip(*run[key], strict=True)]
            label = f"{run['mode']}: {run['target']} at step {run['steps_to_target'] or '-'}"
            ax.plot(steps, moving_average(mean), color=colour, linewidth=2, label=label)
    score_ax.axhline(runs[0]["target"], color="grey", linestyle=":", linewidth=1)
    score_ax.set(xlabel="training step", ylabel="mean PRM step score", ylim=(-1.05, 1.05))
    score_ax.legend(loc="lower right", fontsize=8)
    steps_ax.set(xlabel="training step", ylabel="steps per answer", ylim=(0, None))
    fig.suptitle(f"Tiny policy, TRL GRPOTrainer, scripted PRM behind the gateway ({len(runs[0]['curves'])} seeds)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return {"plot": str(out), "runs": [{k: r[k] for k in ("mode", "steps_to_target", "score_last")} for r in runs]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=list(MODES), help="cdpa (Eq. 3, token_position) or outcome (GRPO on "
                        "R_dense); also the other CDPA modes by name")  # fmt: skip
    parser.add_argument("--steps", type=int, default=40, help="training steps per seed (default 40)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, averaged (default 1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    parser.add_argument("--target", type=float, default=0.8, help="score for steps_to_target (default 0.8)")
    parser.add_argument("--save", type=Path, help="write the per-seed curves and the summary to this JSON file")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="plot saved runs (the files given) instead")
    parser.add_argument("files", nargs="*", type=Path, help="with --plot: JSON files from --save")
    args = parser.parse_args(argv)
    if args.plot:
        if not args.files:
            parser.error("--plot needs the JSON files written by --save")
        result = plot(args.plot, args.files)
    else:
        if args.mode is None or args.files:
            parser.error("give --mode (and no files), or --plot PNG with JSON files")
        if args.steps < 5 or args.seeds < 1:
            parser.error("--steps must be >= 5 (scores are averaged over five steps) and --seeds >= 1")
        result = train(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
