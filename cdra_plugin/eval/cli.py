"""``cdra eval``: generate responses, judge them, report the paper's metrics (Section 3.1, Table 1, Fig. 4).

    cdra eval generate --data out/sample/eval.jsonl --backend http://127.0.0.1:8000/v1 --model policy \\
        --mode policy --output out/eval/policy.jsonl
    cdra eval judge --responses out/eval/policy.jsonl --judge https://api.deepseek.com/v1 \\
        --judge-model deepseek-chat --api-key-env DEEPSEEK_API_KEY --output out/eval/policy.judged.jsonl
    cdra eval report --runs zero-shot=out/eval/zero-shot.judged.jsonl policy=out/eval/policy.judged.jsonl \\
        --output out/eval/report

generate and judge probe their server before the first call (--skip-health-check skips it), stop at once on a
failure no retry fixes (an unknown model name, a refused key) with the server's message, exit with status 1 while
any requested response or verdict is missing, and resume where an earlier run stopped (rerun the same command;
judge --retry-failed asks its null verdicts again). Every model call goes through the project's one client
(cdra_plugin.llm.client: several backends, concurrency cap, retries with backoff, keys redacted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdra_plugin import Failed, add_run_options
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
        "sample, generation (the settings used, which the report shows). Rows already in --output are skipped; "
        "a prompt whose call fails writes nothing and makes the exit status 1 (rerun to retry it); a failure no "
        "retry fixes (unknown model, bad request, refused key) stops the run at once.",
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
    calls = gen.add_argument_group("model calls")
    POLICY.add_options(calls, max_tokens=2048, timeout=300.0)
    _add_health_check(calls, "--backend")
    add_run_options(gen)
    gen.set_defaults(func=run_generate)

    jud = sub.add_parser(
        "judge",
        help="judge responses with an LLM: the eight checks of the protocol (resumable)",
        description="Ask a judge LLM the paper's checks (Figs. 7-9, misleading, PrefEval's four) about "
        "every response. Output rows: id, topic, mode, model, sample, judge, verdicts {check: "
        "true|false|null}, explanations, restatement, failures {check: kind}, protocol (judge, prompt sources "
        "and SHA-256, judge input), generation. An answer without <answer>Yes|No</answer> is retried, then "
        "recorded as null and counted; never guessed. Exit status 1 while any verdict is null (rerun with "
        "--retry-failed); a failure no retry fixes stops the run at once. Answers are cached by (prompt, judge "
        "model) beside --output. Numbers comparable with the paper's PrefEval rows need PrefEval's own four "
        "prompt files (--prompt-dir).",
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
    g.add_argument("--limit", type=int, help="only the first N responses of --responses")
    g.add_argument(
        "--retry-failed",
        action="store_true",
        help="ask the checks whose verdict an earlier run left null again (the other verdicts of those rows are kept)",
    )
    g.add_argument("--cache", help="answer cache JSONL (default: --output with .cache.jsonl)")
    calls = jud.add_argument_group("model calls")
    JUDGE.add_options(calls, max_tokens=1024, timeout=120.0)
    _add_health_check(calls, "--judge")
    add_run_options(jud)
    jud.set_defaults(func=run_judge)

    rep = sub.add_parser(
        "report",
        help="Table 1, paired differences, radar.png (Fig. 4) and errors.png for runs",
        description="Compute Acc_PF (Eq. 5), Acc_DA (Eq. 4), Acc_Mis, m_th, m_dm, m_ie and the "
        "four PrefEval error rates, in percent, with 95% intervals over prompts (Wilson on the prompt-clustered "
        "effective sample size), per topic, and paired differences of every later run minus every earlier one on "
        "the prompts both share (not adjusted for multiple comparisons). Each run's protocol (judge, prompts, "
        "judge input, generation settings, plugin version) is in report.json and one line of report.md; runs "
        "judged differently are refused unless --allow-mixed. Writes report.json, report.md, report.csv, "
        "radar.png, errors.png into --output.",
    )
    rep.add_argument("--runs", nargs="+", required=True, metavar="NAME=JUDGMENTS", help="runs in the order to show")
    rep.add_argument("--output", required=True, help="directory for the report files (written all or nothing)")
    rep.add_argument(
        "--allow-mixed",
        action="store_true",
        help="report runs judged with different judge models, settings or prompts together (they are marked)",
    )
    rep.add_argument("--format", choices=["md", "csv", "json"], default="md", help="what to print (default md)")
    rep.add_argument(
        "--select-by",
        choices=METRICS,
        help="also print the best run by this metric (lowest for "
        "acc_mis and the error rates): `best: NAME METRIC=VALUE`",
    )
    rep.set_defaults(func=run_report)


def _add_health_check(group, option: str) -> None:
    group.add_argument("--skip-health-check", action="store_true",
                       help=f"do not probe {option} (GET /v1/models) before the first call")  # fmt: skip


def _interrupted(output: str) -> KeyboardInterrupt:
    return KeyboardInterrupt(f"what finished is in {output}: rerun the same command to resume")


def _tokens(counts: dict) -> str:
    return f"tokens {counts['prompt_tokens']:,} prompt + {counts['completion_tokens']:,} completion"


def _stopped(stop, output: str, done: str) -> Failed:
    """A run stopped at a failure no retry fixes: the server's message, and what was kept."""
    return Failed(
        f"stopped: {stop.error} (a {stop.error.kind} that no retry fixes); {done} -> {output} and kept: fix the "
        "cause and rerun the same command to go on"
    )


def run_generate(args: argparse.Namespace) -> int:
    from cdra_plugin.eval.calls import Stopped
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
            health_check=not args.skip_health_check,
            progress=not args.no_progress,
            **POLICY.client_kwargs(args),
        )
    except Stopped as stop:
        raise _stopped(stop, args.output, f"{stop.counts['written']} response(s) written") from None
    except KeyboardInterrupt:
        raise _interrupted(args.output) from None
    failed = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts["failed"].items())) or "none"
    refused = f"; {counts['refused_shots']} shot(s) refused (in the evaluated set)" if counts["refused_shots"] else ""
    print(
        f"cdra eval generate: {counts['written']} response(s) written, {counts['skipped']} already there -> "
        f"{args.output}; {_tokens(counts)}; failed prompts: {failed}{refused}"
    )
    return 1 if counts["failed"] else 0


def _nulls(failures: dict) -> str:
    return "; ".join(
        f"{check}: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        for check, kinds in sorted(failures.items())
    )


def run_judge(args: argparse.Namespace) -> int:
    from cdra_plugin.eval.calls import Stopped
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
            limit=args.limit,
            retry_failed=args.retry_failed,
            health_check=not args.skip_health_check,
            progress=not args.no_progress,
            **JUDGE.client_kwargs(args),
        )
    except Stopped as stop:
        done = f"{stop.counts['judged']} response(s) judged"
        if stop.counts["failures"]:
            done += f" (failures by kind: {_nulls(stop.counts['failures'])})"
        raise _stopped(stop, args.output, done) from None
    except KeyboardInterrupt:
        raise _interrupted(args.output) from None
    retried = f" ({counts['retried']} with null verdicts asked again)" if counts["retried"] else ""
    print(
        f"cdra eval judge: {counts['judged']} response(s) judged{retried}, {counts['skipped']} already there -> "
        f"{args.output}; {counts['calls']} judge call(s), {counts['cached']} answered from the cache; "
        f"{_tokens(counts)}; null verdicts (failures by kind): {_nulls(counts['failures']) or 'none'}"
    )
    if counts["earlier_nulls"]:
        print(
            f"cdra eval judge: {counts['earlier_nulls']} response(s) already in {args.output} have null verdicts: "
            "rerun with --retry-failed to ask those checks again",
            file=sys.stderr,
        )
    return 1 if counts["failures"] or counts["earlier_nulls"] else 0


def run_report(args: argparse.Namespace) -> int:
    from cdra_plugin.eval.metrics import best_run
    from cdra_plugin.eval.report import csv_text, report

    runs = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--runs {spec!r}: expected NAME=JUDGMENTS_FILE")
        if name in runs:
            raise ValueError(f"--runs: the name {name!r} is given twice")
        runs[name] = path
    result = report(runs, args.output, allow_mixed=args.allow_mixed)
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
