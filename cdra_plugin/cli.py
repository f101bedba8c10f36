"""The ``cdra`` command: one command group per stage of the pipeline, every command ended by one runner (``run``).

    cdra --version
    cdra demo
    cdra data prepare --input trees/ --output out/
    cdra prm serve --backend http://127.0.0.1:8000/v1 --model pers-genprm
    cdra eval generate|judge|report ...
    cdra traces show traces.jsonl

Exit statuses and stderr, the same for every command:

    0        done
    1        the run failed: a server, a write, or failures it counted    cdra COMMAND: error: ... (or its summary)
    2        usage or bad input: an option, a path, a file's content      cdra COMMAND: error: ... (after the
                                                                           command's usage, for usage errors)
    130/143  SIGINT (Ctrl-C) / SIGTERM: every ``finally`` runs first, so    cdra COMMAND: interrupted (SIGINT);
             servers stop and no half-written output survives              what was kept
    141      the reader of stdout went away (``| head``): stopped as a      nothing (the reader has what it wanted)
             Unix tool is by SIGPIPE, ``finally`` blocks run first

A command (``func`` of its parser) returns 0 or 1, raises ``ValueError`` for bad input and ``cdra_plugin.Failed``
for a failed run, and lets ``KeyboardInterrupt`` through, re-raised as ``KeyboardInterrupt("what was kept")`` when
it has something to say. Logging is set up here for every command: one format, ``--log-level`` where the command
has it (``cdra_plugin.add_run_options``), else warnings and errors.
"""

import argparse
import contextlib
import difflib
import logging
import os
import signal
import sys
import threading

from cdra_plugin import Failed, __version__, quiet_third_party
from cdra_plugin.construct import cli as build_cli
from cdra_plugin.data import cli as data_cli
from cdra_plugin.demo import pipeline as demo
from cdra_plugin.eval import cli as eval_cli
from cdra_plugin.prm import cli as prm_cli
from cdra_plugin.traces import cli as traces_cli

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A path the user named that cannot be used is bad input; other OSErrors (a full disk, a lost connection) fail a run.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)

logger = logging.getLogger("cdra")


class Parser(argparse.ArgumentParser):
    """Every ``cdra`` parser (sub-parsers inherit the class): an unknown option is reported with the usage of the
    command it was given to, and --help shows single backquotes where the docstrings it reuses have
    reStructuredText's double ones."""

    _given: list[str] = []  # the arguments this parser was given

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        return namespace, extras

    def error(self, message: str):
        # A misspelt required option is reported as what it is, not as the option it was meant to be.
        unknown = [t for t in self._given if t.startswith("--") and not self._options(t.split("=")[0])]
        if unknown and message.startswith(("the following arguments are required", "one of the arguments")):
            message = self._unrecognized(unknown)
        super().error(message)

    def _options(self, prefix: str = "") -> list[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith(prefix)]

    def _unrecognized(self, extras: list[str]) -> str:
        close = difflib.get_close_matches(extras[0].split("=")[0], self._options(), n=1)
        return f"unrecognized arguments: {' '.join(extras)}" + (f" (did you mean {close[0]}?)" if close else "")

    def format_help(self) -> str:
        return super().format_help().replace("``", "`")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cdra",
        description="Critique-Driven Reasoning Alignment (CDRA) for OpenRLHF: one command group per stage of the "
        "pipeline, listed below. Training itself is `cdra-train` (OpenRLHF's train_ppo_ray with the `cdpa` "
        "estimator). Exit status: 0 done, 1 the run failed, 2 usage or bad input, 130/143 SIGINT/SIGTERM.",
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
    quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return run(args)


def run(args: argparse.Namespace) -> int:
    """``args.func(args)`` with the exit statuses and messages of the module docstring."""
    name = " ".join(filter(None, (args.command, getattr(args, f"{args.command}_command", None))))
    logging.basicConfig(format=LOG_FORMAT)  # a no-op where a handler exists (an embedding program's, pytest's)
    logging.getLogger().setLevel(getattr(args, "log_level", "warning").upper())
    received: list[int] = []
    try:
        with _signals_as_interrupts(received):
            return args.func(args)
    except KeyboardInterrupt as exc:
        signum = received[-1] if received else signal.SIGINT
        kept = f"; {exc}" if str(exc) else ""
        print(f"cdra {name}: interrupted ({signal.Signals(signum).name}){kept}", file=sys.stderr, flush=True)
        return 128 + signum
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 128 + signal.SIGPIPE
    except (ValueError, *PATH_ERRORS) as exc:
        return _error(name, exc, 2)
    except (Failed, OSError) as exc:
        return _error(name, exc, 1)


def _error(name: str, exc: BaseException, status: int) -> int:
    logger.debug("cdra %s failed", name, exc_info=exc)
    message = str(exc)
    if isinstance(exc, OSError) and exc.strerror:  # the system's: "PATH: No such file or directory", no [Errno 2]
        message = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    print(f"cdra {name}: error: {message}", file=sys.stderr, flush=True)
    return status


@contextlib.contextmanager
def _signals_as_interrupts(received: list[int]):
    """SIGTERM (a scheduler's or `kill`'s stop) takes Ctrl-C's path, recorded in ``received``: the SIGINT handler in
    place runs (Python's raises KeyboardInterrupt; inside ``asyncio.run`` the runner's cancels its task first)."""

    def interrupt(signum, frame):
        received.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIGINT ignored (a background job) or left to the system
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
