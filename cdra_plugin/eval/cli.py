"""``cdra eval``: generate responses, judge them, report the paper's metrics (Section 3.1, Table 1, Fig. 4).

    cdra eval generate --data out/sample/eval.jsonl --backend http://127.0.0.1:8000/v1 --model policy \\
        --mode policy --output out/eval/policy.jsonl
    cdra eval judge --responses out/eval/policy.jsonl --judge https://api.deepseek.com/v1 \\
        --judge-model deepseek-chat --api-key-env DEEPSEEK_API_KEY --output out/eval/policy.judged.jsonl
    cdra eval report --runs zero-shot=out/eval/zero-shot.judged.jsonl policy=out/eval/policy.judged.jsonl \\
        --output out/eval/report

generate and judge resume where an earlier run stopped (rerun the same command); every model call goes through the
project's one client (cdra_plugin.llm.client: several backends, concurrency cap, retries with backoff, keys redacted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdra_plugin.eval.baselines import MODES
from cdra_plugin.eval.metrics import METRICS
from cdra_plugin.eval.prompts import CHECKS
from cdra_plugin.llm.options import Endpoint

POLICY = Endpoint("--backend", "--model", "the model under evaluation")
JUDGE = Endpoint("--judge", "--judge-model", "the judge")


def add_parser(subparsers) -> None:
    ev = subparsers.add_parser(
        "eval",
        help="evaluate models with the paper's LLM-judge protocol (Table 1, Fig. 4)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ev.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)

    gen = sub.add_parser(
        "generate",
        help="sample responses of a model to an evaluation file (resumable)",
        description="Sample --n responses per (preference, question) of --data from the model "
        "under evaluation. Output rows: id, topic, preference, question, response, mode, model, "
        "sample. Rows already in --output are skipped; a prompt whose call fails writes nothing and "
        "makes the exit status 1 (rerun to retry it).",
    )
    g = gen.add_argument_group("what to generate")
    g.add_argument(
        "--data",
        required=True,
        help="eval.jsonl or rl_prompts.jsonl from `cdra data prepare` "
        "(DeepPref or PrefEval), or JSONL with id, topic, preference, question",
    )
    POLICY.add_endpoint(g, "; vLLM serving a checkpoint, or a hosted API")
    g.add_argument("--output", required=True, help="responses JSONL (appended; existing rows are kept and skipped)")
    g.add_argument(
        "--mode",
        choices=MODES,
        default="policy",
        help="policy: the Fig. 14 prompt training used "
        "(default); zero-shot, few-shot, cot: the in-context baselines of Appendix C",
    )
    g.add_argument(
        "--shots",
        help="few-shot demonstrations: JSONL with preference, question and response (or "
        "reference/output); any in the evaluated set is refused",
    )
    g.add_argument("--k", type=int, default=3, help="few-shot demonstrations per prompt (default 3)")
    g.add_argument("--n", type=int, default=1, help="responses per prompt (default 1; > 1 needs --temperature > 0)")
    g.add_argument("--seed", type=int, help="sampling seed sent with every request, and the draw of the shots")
    g.add_argument("--limit", type=int, help="only the first N items of --data")
    POLICY.add_options(gen.add_argument_group("model calls"), max_tokens=2048, timeout=300.0)
    gen.set_defaults(func=run_generate)

    jud = sub.add_parser(
        "judge",
        help="judge responses with an LLM: the eight checks of the protocol (resumable)",
        description="Ask a judge LLM the paper's checks (Figs. 7-9, misleading, PrefEval's four) about "
        "every response. Output rows: id, topic, mode, model, sample, judge, verdicts {check: "
        "true|false|null}, explanations, restatement, failures {check: kind}. An answer without "
        "<answer>Yes|No</answer> is retried, then recorded as null and counted; never guessed. "
        "Answers are cached by (prompt, judge model) beside --output.",
    )
    g = jud.add_argument_group("what to judge")
    g.add_argument("--responses", required=True, help="output of `cdra eval generate`")
    JUDGE.add_endpoint(g, "; the paper's judge: DeepSeek-V3.2-Exp")
    g.add_argument("--output", required=True, help="judgments JSONL (appended; responses already there are skipped)")
    g.add_argument(
        "--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)} (default all)"
    )
    g.add_argument(
        "--prompt-dir",
        help="directory of prompt files replacing the built-in ones: <check>.txt, or "
        "PrefEval's check_acknowledge.txt, check_violation.txt, check_hallucination.txt, check_helpful.txt; "
        "placeholders {preference} {question} {end_generation} {assistant_restatement}",
    )
    g.add_argument(
        "--judge-input",
        choices=["full", "final"],
        default="full",
        help="{end_generation} = the whole response (default) or its last step",
    )
    g.add_argument("--cache", help="answer cache JSONL (default: --output with .cache.jsonl)")
    JUDGE.add_options(jud.add_argument_group("model calls"), max_tokens=1024, timeout=120.0)
    jud.set_defaults(func=run_judge)

    rep = sub.add_parser(
        "report",
        help="Table 1, paired differences, radar.png (Fig. 4) and errors.png for runs",
        description="Compute Acc_PF (Eq. 5), Acc_DA (Eq. 4), Acc_Mis, m_th, m_dm, m_ie and the "
        "four PrefEval error rates, in percent, with 95% bootstrap intervals over prompts, per topic, "
        "and paired differences of every later run minus every earlier one on the prompts both "
        "share. Writes report.json, report.md, report.csv, radar.png, errors.png into --output.",
    )
    rep.add_argument("--runs", nargs="+", required=True, metavar="NAME=JUDGMENTS", help="runs in the order to show")
    rep.add_argument("--output", required=True, help="directory for the report files (written all or nothing)")
    rep.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000; 0 = no intervals)"
    )
    rep.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    rep.add_argument("--format", choices=["md", "csv", "json"], default="md", help="what to print (default md)")
    rep.add_argument(
        "--select-by",
        choices=METRICS,
        help="also print the best run by this metric (lowest for "
        "acc_mis and the error rates): `best: NAME METRIC=VALUE`",
    )
    rep.set_defaults(func=run_report)


def _fail(command: str, exc: BaseException) -> int:
    print(f"cdra eval {command}: error: {exc}", file=sys.stderr)
    return 2


def _interrupted(command: str, output: str) -> int:
    print(
        f"cdra eval {command}: interrupted; what finished is in {output}: rerun the same command to resume",
        file=sys.stderr,
    )
    return 130


def _tokens(counts: dict) -> str:
    return f"tokens {counts['prompt_tokens']:,} prompt + {counts['completion_tokens']:,} completion"


def run_generate(args: argparse.Namespace) -> int:
    from cdra_plugin.eval.generate import generate

    try:
        counts = generate(
            args.data,
            args.output,
            backend=args.backend,
            model=args.model,
            mode=args.mode,
            n=args.n,
            seed=args.seed,
            limit=args.limit,
            shots=args.shots,
            k=args.k,
            **POLICY.client_kwargs(args),
        )
    except (ValueError, OSError) as exc:
        return _fail("generate", exc)
    except KeyboardInterrupt:
        return _interrupted("generate", args.output)
    failed = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts["failed"].items())) or "none"
    refused = f"; {counts['refused_shots']} shot(s) refused (in the evaluated set)" if counts["refused_shots"] else ""
    print(
        f"cdra eval generate: {counts['written']} response(s) written, {counts['skipped']} already there -> "
        f"{args.output}; {_tokens(counts)}; failed prompts: {failed}{refused}"
    )
    return 1 if counts["failed"] else 0


def run_judge(args: argparse.Namespace) -> int:
    from cdra_plugin.eval.judge import judge

    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    try:
        counts = judge(
            args.responses,
            args.output,
            backend=args.judge,
            model=args.judge_model,
            checks=checks,
            prompt_dir=args.prompt_dir,
            judge_input=args.judge_input,
            cache=args.cache,
            **JUDGE.client_kwargs(args),
        )
    except (ValueError, OSError) as exc:
        return _fail("judge", exc)
    except KeyboardInterrupt:
        return _interrupted("judge", args.output)
    nulls = (
        "; ".join(
            f"{check}: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
            for check, kinds in sorted(counts["failures"].items())
        )
        or "none"
    )
    print(
        f"cdra eval judge: {counts['judged']} response(s) judged, {counts['skipped']} already there -> "
        f"{args.output}; {counts['calls']} judge call(s), {counts['cached']} answered from the cache; "
        f"{_tokens(counts)}; null verdicts (failures by kind): {nulls}"
    )
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cdra_plugin.eval.metrics import best_run
    from cdra_plugin.eval.report import csv_text, report

    try:
        runs = {}
        for spec in args.runs:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--runs {spec!r}: expected NAME=JUDGMENTS_FILE")
            if name in runs:
                raise ValueError(f"--runs: the name {name!r} is given twice")
            runs[name] = path
        result = report(runs, args.output, bootstrap=args.bootstrap, seed=args.seed)
    except (ValueError, OSError) as exc:
        return _fail("report", exc)
    if args.format == "json":
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif args.format == "csv":
        print(csv_text(result), end="")
    else:
        print((Path(args.output) / "report.md").read_text(encoding="utf-8"), end="")
    if args.select_by:  # on stderr under --format json, so stdout stays one JSON document
        best = best_run(result, args.select_by)
        line = f"best: {best[0]} {args.select_by}={best[1]}" if best else f"best: none ({args.select_by} is n/a)"
        print(line, file=sys.stderr if args.format == "json" else sys.stdout)
    return 0
