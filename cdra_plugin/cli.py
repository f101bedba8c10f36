"""The ``cdra`` command: one sub-command group per stage of the pipeline.

cdra --version
cdra data prepare --input trees/ --output out/
cdra prm serve --backend http://127.0.0.1:8000/v1 --model pers-genprm
cdra eval generate|judge|report ...
cdra traces show traces.jsonl
"""

import argparse
import sys

from cdra_plugin import __version__, silence_pynvml_notice
from cdra_plugin.construct import cli as build_cli
from cdra_plugin.data import cli as data_cli
from cdra_plugin.demo import pipeline as demo
from cdra_plugin.eval import cli as eval_cli
from cdra_plugin.prm import cli as prm_cli
from cdra_plugin.traces import cli as traces_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdra",
        description="Critique-Driven Reasoning Alignment (CDRA) for OpenRLHF: one command group per stage of the "
        "pipeline, listed below. Training itself is `cdra-train` (OpenRLHF's train_ppo_ray with the `cdpa` "
        "estimator).",
    )
    parser.add_argument("--version", action="version", version=f"cdra-plugin {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo.add_parser(subparsers)
    data_cli.add_parser(subparsers)
    build_cli.add_parser(subparsers)
    prm_cli.add_parser(subparsers)
    eval_cli.add_parser(subparsers)
    traces_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    silence_pynvml_notice()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:  # commands that need more (cdra data prepare) handle it themselves
        print(f"cdra {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
