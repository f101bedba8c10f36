"""``cdra build``: DeepPref trees from (preference, question) pairs with any OpenAI-compatible generator/evaluator.

    cdra build --input ../shared/data/prefeval_explicit --output data/trees \\
        --generator http://127.0.0.1:8000/v1 --generator-model qwen-72b \\
        --evaluator https://api.openai.com/v1 --evaluator-model gpt-4.1 --evaluator-api-key-env OPENAI_API_KEY
    cdra data prepare --input data/trees --output data/deeppref
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from cdra_plugin import Failed, add_run_options
from cdra_plugin.construct.prompts import PERSONAS, Persona
from cdra_plugin.llm.options import Endpoint

# Each role has its own URL, model, key, sampling and concurrency; the other client options are shared.
ROLE_OPTIONS = ("api_key", "temperature", "max_tokens", "concurrency")
GENERATOR = Endpoint("--generator", "--generator-model", "the generator", own=ROLE_OPTIONS)
EVALUATOR = Endpoint("--evaluator", "--evaluator-model", "the evaluator", own=ROLE_OPTIONS)

EPILOG = """\
the tree (paper Appendix E; defaults K=5, b=2, D=4, X=0.4, k=2: about 34 calls; every path has D steps + an answer):
  level 1       one generator call per persona (Fig. 11, first prompt): K hypotheses
  levels 2..D   one generator call with n=b per kept node (Fig. 11, follow-up prompt): b children each
  every node    scored by the evaluator (Fig. 12): critique + SCORE in [-1, 1]; unparsable after retries = pruned
  pruning       per level: score < --prune-below, then only the --keep-top best of the level are expanded
  answers       each leaf gets a final answer, scored as a step (Fig. 12) and as a whole path (Fig. 13, 0-100)

outputs in --output (resumable: run the same command again after an interrupt):
  cot_<Topic>_preferences.json   DeepPref records: thought_tree (+ persona, depth, kind per node), response_list
                                 (paths with their Fig. 13 scores), pruned_nodes (with why); cdra data prepare
                                 --input DIR reads them
  build/build_stats.json         scenarios built/skipped, nodes generated/pruned, failures by kind, calls, tokens
  build/journal.jsonl            finished scenarios (the resume state); build/config.json: the tree options"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "build",
        help="build DeepPref trees from (preference, question) pairs (the persona council, Figs. 11-13)",
        description="DeepPref construction (paper Section 2.2, Appendix E): a council of expert personas grows a\n"
        "Tree of Thoughts per (P, q) with a generator model; an evaluator model critiques and scores every\n"
        "thought (Fig. 12) and every finished path (Fig. 13); low-scoring branches are pruned.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--input", required=True, metavar="PATH", help="PrefEval-style JSON file or folder of them "
                   "(topic = file name), or JSONL rows {preference, question, topic?}")  # fmt: skip
    g.add_argument(
        "--output", required=True, type=Path, metavar="DIR", help="output directory (see below); resumes a build there"
    )
    g.add_argument("--limit", type=int, metavar="N", help="build only the first N distinct pairs of the input")
    g.add_argument("--retry-skipped", action="store_true", help="rebuild scenarios a previous run skipped")
    for role, temperature, max_tokens, output in (
        (GENERATOR, 0.8, 512, "one thought or answer"),
        (EVALUATOR, 0.0, 1024, "one critique and its score"),
    ):
        g = p.add_argument_group(role.what.removeprefix("the "))
        role.add_endpoint(g)
        role.add_options(g, role.own, {"max_tokens": f"length limit of {output}, in tokens"},
                         temperature=temperature, max_tokens=max_tokens)  # fmt: skip
    g = p.add_argument_group("calls (both roles)")
    GENERATOR.add_options(  # not among ROLE_OPTIONS: spelt without the role, read by both
        g, ("prompt_format", "timeout", "retries", "backoff", "backoff_max"), timeout=120.0
    )
    g.add_argument("--skip-health-check", action="store_true", help="do not probe GET /v1/models before building")
    g = p.add_argument_group("tree (Appendix E)")
    g.add_argument("--personas", default=None, metavar="NAMES|FILE.json",
                   help="comma-separated names among " + ", ".join(x.short for x in PERSONAS) + " (default: all "
                   "five), or a JSON file: a list of {\"name\", \"description\"}")  # fmt: skip
    g.add_argument("--branch", type=int, default=2, metavar="b", help="b: children per expanded node (default 2)")
    g.add_argument(
        "--depth", type=int, default=4, metavar="D", help="D: levels of hypotheses before the answer (default 4)"
    )
    g.add_argument("--prune-below", default="0.4", metavar="X|off",
                   help="prune thoughts scoring below X in [-1, 1] (default 0.4: Fig. 12 calls lower scores "
                   "'no real inference'); off: no threshold")  # fmt: skip
    g.add_argument(
        "--keep-top", type=int, default=2, metavar="k", help="expand only the k best of each level (default 2; 0: all)"
    )
    g.add_argument("--seed", default="0", metavar="N|none",
                   help="seed of the generator's sampling, per node (default 0); none: send no seed")  # fmt: skip
    g = p.add_argument_group("run")
    g.add_argument("--parallel", type=int, default=None, metavar="N", help="scenarios in flight at once (default: "
                   "the busier role's calls in flight, concurrency x URLs, which keeps its servers full)")  # fmt: skip
    add_run_options(p)
    p.set_defaults(func=run_build)


def parse_personas(value: str | None) -> tuple[Persona, ...]:
    """``--personas``: None (the paper's five), comma-separated built-in names, or a JSON file of personas."""
    if value is None:
        return PERSONAS
    if value.endswith(".json"):
        try:
            data = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--personas {value}: {exc}") from None
        ok = isinstance(data, list) and all(
            isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("description", ""), str)
            for d in data
        )
        if not ok or not data:
            raise ValueError(f'--personas {value}: expected a non-empty JSON list of {{"name", "description"}}')
        return tuple(Persona(d["name"].strip(), d.get("description", "").strip()) for d in data)
    known = {key: p for p in PERSONAS for key in (p.name.casefold(), p.short.casefold())}
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n.casefold() not in known]
    if unknown or not names:
        raise ValueError(f"--personas: unknown {unknown or value!r}; known: {', '.join(p.short for p in PERSONAS)} "
                         "(or give a JSON file of {name, description})")  # fmt: skip
    return tuple(known[n.casefold()] for n in names)


def _optional(value: str, option: str, kind):
    if value.strip().casefold() in ("off", "none"):
        return None
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{option}: expected a number or 'off', got {value!r}") from None


def options_from(args, default_parallel: int):
    from cdra_plugin.construct.runner import BuildOptions
    from cdra_plugin.construct.tree import TreeShape

    keep_top = None if args.keep_top == 0 else args.keep_top
    shape = TreeShape(parse_personas(args.personas), args.branch, args.depth,
                      _optional(args.prune_below, "--prune-below", float), keep_top)  # fmt: skip
    return BuildOptions(
        input=args.input,
        output=args.output,
        shape=shape,
        limit=args.limit,
        seed=_optional(args.seed, "--seed", int),
        parallel=default_parallel if args.parallel is None else args.parallel,
        retry_skipped=args.retry_skipped,
        progress=not args.no_progress,
        health_check=not args.skip_health_check,
    )


async def _build(args) -> dict:
    from cdra_plugin.construct.runner import build
    from cdra_plugin.llm.client import connect_endpoint

    clients = []
    try:
        clients += [connect_endpoint(GENERATOR, args)]
        clients += [connect_endpoint(EVALUATOR, args)]
        # scripts/bench_build.py: as many scenarios in flight as the busier role has server slots reach the bound
        slots = max(c.concurrency * len(c.backends) for c in clients)
        return await build(options_from(args, slots), *clients)
    finally:
        for client in clients:
            await client.aclose()


def run_build(args) -> int:
    from cdra_plugin.construct.io import topic_file

    try:
        stats = asyncio.run(_build(args))
    except OSError as exc:
        raise Failed(f"{exc} (finished scenarios are kept in the journal)") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"finished scenarios are in {args.output}/build/journal.jsonl and earlier outputs are untouched: run the "
            "same command again to resume"
        ) from None
    _report(stats, args.output, topic_file)
    return 0 if stats["scenarios"]["built"] or not stats["scenarios"]["selected"] else 1


def _report(stats: dict, output: Path, topic_file) -> None:
    s, run = stats["scenarios"], stats["runs"][-1]
    print(f"{s['built']} scenarios built, {s['skipped']} skipped, {s['not_yet_built']} not yet built "
          f"({s['duplicates']} duplicate pairs in the input); this run: {run.get('built', 0)} built, "
          f"{run.get('skipped', 0)} skipped in {run['wall_s']:.1f} s")  # fmt: skip
    for reason, n in s["skipped_by_reason"].items():
        print(f"  skipped ({reason}): {n}")
    failures = {f"{stage}.{kind}": n for stage, kinds in stats["failures"].items() for kind, n in kinds.items()}
    if failures:
        print("  failed calls: " + ", ".join(f"{k} {n}" for k, n in sorted(failures.items())))
    for topic, counts in stats["topics"].items():
        if counts.get("built"):
            print(f"  {output / topic_file(topic)}: {counts['built']} scenarios, {counts.get('paths', 0)} paths")
    print(f"  {output / 'build' / 'build_stats.json'}")
    print(f"next: cdra data prepare --input {output} --output <dir>")
