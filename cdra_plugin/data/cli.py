"""``cdra data``: prepare training/evaluation files from DeepPref trees or PrefEval pairs, or validate input.

Usage (``cdra data prepare --help`` describes every output file):

    cdra data prepare --input cdra_plugin/demo/samples/ --output out/sample --eval-size 2
    cdra data prepare --prefeval ../shared/data/prefeval_explicit --output out/prefeval
    cdra data validate --input trees/
"""

import argparse
import sys
from pathlib import Path

from cdra_plugin import Failed, add_run_options
from cdra_plugin.data.loader import InputError, load_deeppref, load_prefeval
from cdra_plugin.data.prepare import PrepareOptions, prepare_deeppref, prepare_prefeval
from cdra_plugin.data.schema import RecordError
from cdra_plugin.io.writer import InterruptedAfterCommit

SHOWN_SKIPS = 20
PREPARE_EPILOG = """\
outputs (JSON Lines; every "input" is a list of chat messages, use --data.apply_chat_template):
  prm_sft.jsonl     Pers-GenPRM SFT (Eq. 2): one example per reasoning step j. input = the Fig. 15 PRM prompt
                    with P, q and steps 1..j; output = "Reasoning: <critique c_j>" + a last line "SCORE: <r_j>".
                    Train: openrlhf.cli.train_sft --data.input_key input --data.output_key output
                    --data.apply_chat_template (loss on the assistant part only). recipes/train_prm_sft.sh
  rft.jsonl         D_RFT for the policy pi_0: per scenario the --top-k root-to-leaf paths with the highest
                    R(tau) = sum_j r_j; input = the Fig. 14 prompt, output = "Step 1: ...\\nStep N: <answer>".
                    recipes/train_policy_rft.sh
  rl_prompts.jsonl  RL prompts: input = the Fig. 14 prompt, label = JSON {"preference", "question", "id",
                    "topic"} read by the PRM gateway. train_ppo_ray --data.prompt_dataset ... --data.input_key
                    input --data.label_key label --data.apply_chat_template
  eval.jsonl        the held-out scenarios (--eval-size, stratified by topic, fixed by --seed), same keys as
                    rl_prompts plus "preference", "question" and the best tree path ("reference", DeepPref) or
                    PrefEval's "explanation". No eval scenario appears in any other file.
  stats.json        counts per topic (scenarios, train/eval, paths, steps, examples), the PRM score
                    distribution, path lengths, R(tau) of RFT paths, skipped records, options used.
With --prefeval only rl_prompts.jsonl, eval.jsonl and stats.json are written.

The files are written as one set, all or nothing: into a hidden staging folder, then moved into --output by a
journalled commit, so no run leaves a half-written file or a mix of two runs (Ctrl-C or SIGTERM: exit status 130
or 143, nothing changed). Temporaries left by a killed run are removed by the next run. An --output directory that
already holds any of these names is refused unless --overwrite. Scenario ids are "<topic>/<index in file>"; the
topic is <Topic> of cot_<Topic>_preferences.json (else the file stem). --eval-size larger than the number of
distinct scenarios is an error (it is not clamped)."""


def add_parser(subparsers) -> None:
    data = subparsers.add_parser(
        "data",
        help="DeepPref/PrefEval -> datasets for the PRM, RFT and RL",
        description="DeepPref adapter (paper Section 2.2, Appendix E): turn DeepPref reasoning trees into Pers-GenPRM "
        "SFT data, the RFT subset, RL prompts and an evaluation split, or PrefEval pairs into RL/eval prompts.",
    )
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    prepare = commands.add_parser(
        "prepare",
        help="write prm_sft/rft/rl_prompts/eval .jsonl and stats.json",
        description="Convert DeepPref reasoning trees (--input) or PrefEval pairs (--prefeval) into the files "
        "each stage of CDRA trains or evaluates on.",
        epilog=PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = prepare.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="PATH", help="DeepPref file, directory of .json/.jsonl files, or glob")
    source.add_argument("--prefeval", metavar="DIR", help="PrefEval explicit-preference directory (<topic>.json)")
    prepare.add_argument("--output", required=True, metavar="DIR", help="output directory (created if missing)")
    prepare.add_argument("--eval-size", type=int, default=300, help="held-out scenarios for eval.jsonl (default 300)")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the train/eval split (default 0)")
    prepare.add_argument("--top-k", type=int, default=1, help="RFT paths kept per scenario, by R(tau) (default 1)")
    prepare.add_argument(
        "--prm-examples",
        choices=["node", "path"],
        default="node",
        help="node: one PRM example per distinct step prefix (default); path: one per (path, step), so steps "
        "shared by several paths repeat",
    )
    prepare.add_argument("--skip-invalid", action="store_true", help="skip malformed records, report them at the end")
    prepare.add_argument("--overwrite", action="store_true", help="replace existing outputs in --output")
    add_run_options(prepare)
    prepare.set_defaults(func=run_prepare)

    validate = commands.add_parser(
        "validate",
        help="check input files and list every malformed record",
        description="Read DeepPref (--input) or PrefEval (--prefeval) files, print each malformed record (file, "
        "record index, field) and a summary; exit status 1 if any was found. Writes nothing.",
    )
    source = validate.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="PATH", help="DeepPref file, directory or glob")
    source.add_argument("--prefeval", metavar="DIR", help="PrefEval directory")
    validate.set_defaults(func=run_validate)


def run_prepare(args) -> int:
    options = PrepareOptions(
        eval_size=args.eval_size,
        seed=args.seed,
        top_k=args.top_k,
        prm_examples=args.prm_examples,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        if args.input:
            stats = prepare_deeppref(args.input, args.output, options)
        else:
            stats = prepare_prefeval(args.prefeval, args.output, options)
    except InterruptedAfterCommit:
        raise KeyboardInterrupt(f"{args.output} had already received this run's complete set") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"nothing in {args.output} was written or changed") from None
    except InputError as exc:
        raise InputError(f"{_source(args)} {exc}") from None
    except RecordError as exc:
        raise ValueError(
            f"{exc} (nothing was written; fix the record, or pass --skip-invalid to skip bad ones)"
        ) from None
    except OSError as exc:
        raise Failed(f"writing {args.output} failed: {exc} (no output file was written or changed)") from None
    _report(stats, Path(args.output))
    return 0


def _source(args) -> str:
    return "--input" if args.input else "--prefeval"


def _report(stats: dict, output: Path) -> None:
    records = stats["records"]
    print(
        f"{records['valid']} valid records ({records['distinct_scenarios']} distinct scenarios, "
        f"{records['eval_scenarios']} held out for eval) from {len(stats['files'])} file(s)"
    )
    if "paths" in stats:
        paths = stats["paths"]
        print(f"{paths['total']} reasoning paths, {paths['length']['mean']:.2f} steps on average")
    for name, rows in stats["outputs"].items():
        print(f"  {output / name}: {rows} rows")
    print(f"  {output / 'stats.json'}")
    clipped = stats.get("prm_scores", {}).get("clipped", 0)
    if clipped:
        print(f"{clipped} PRM target(s) annotated off the [-1, 1] scale were written at its nearest end "
              "(prm_scores in stats.json)", file=sys.stderr)  # fmt: skip
    skipped = stats["skipped"]
    if skipped["count"]:
        print(f"skipped {skipped['count']} invalid record(s) or file(s):", file=sys.stderr)
        for err in skipped["records"][:SHOWN_SKIPS]:
            print(f"  {RecordError(err['file'], err['record'], err['field'], err['error'])}", file=sys.stderr)
        if skipped["count"] > SHOWN_SKIPS:
            print(f"  ... and {skipped['count'] - SHOWN_SKIPS} more, listed in stats.json", file=sys.stderr)


def run_validate(args) -> int:
    try:
        loaded = load_deeppref(args.input, True) if args.input else load_prefeval(args.prefeval, True)
    except InputError as exc:
        raise InputError(f"{_source(args)} {exc}") from None
    for err in loaded.skipped:
        print(err, file=sys.stderr)
    valid, invalid, files = len(loaded.records), len(loaded.skipped), len(loaded.files)
    print(f"{valid} valid, {invalid} invalid record(s) or file(s) in {files} file(s)")
    return 1 if loaded.skipped else 0
