"""One runner for every `cdra` command (cdra_plugin.cli.run): the same exit statuses and one-line messages everywhere,
a misspelt option answered with the usage of the command it was given to, and the same parts in every --help."""

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cdra_plugin.cli import build_parser, main
from cdra_plugin.stub.processes import free_port, start_server

ROOT = Path(__file__).resolve().parents[1]
URL = "http://127.0.0.1:9/v1"  # nothing is called: each command stops at its input first
LONG_RUNNING = ["build", "data prepare", "demo", "eval generate", "eval judge", "prm score"]


def commands(parser=None, path=()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """{("data", "prepare"): its parser, ...} for every command group and command, read from the parser tree."""
    found = {}
    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[(*path, name)] = sub
                found.update(commands(sub, (*path, name)))
    return found


GROUPS = {
    p for p, parser in commands().items() if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
}
LEAVES = sorted(set(commands()) - GROUPS)


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "--input", "{missing}", "--output", "{out}", "--generator", URL, "--generator-model", "m",
         "--evaluator", URL, "--evaluator-model", "m"],
        ["data", "prepare", "--input", "{missing}", "--output", "{out}"],
        ["data", "validate", "--prefeval", "{missing}"],
        ["eval", "generate", "--data", "{missing}", "--backend", URL, "--model", "m", "--output", "{out}"],
        ["eval", "judge", "--responses", "{missing}", "--judge", URL, "--judge-model", "m", "--output", "{out}"],
        ["eval", "report", "--runs", "a={missing}", "--output", "{out}"],
        ["prm", "score", "--backend", URL, "--model", "m", "--input", "{missing}", "--output", "{out}"],
        ["traces", "show", "{missing}"],
    ],
    ids=lambda argv: " ".join(a for a in argv[:2] if not a.startswith("-")),
)  # fmt: skip
def test_a_missing_input_is_bad_input_in_one_line_in_every_command(tmp_path, capsys, argv):
    missing, out = tmp_path / "missing.jsonl", tmp_path / "out"
    code = main([a.format(missing=missing, out=out) for a in argv])
    err = capsys.readouterr().err
    name = " ".join(a for a in argv[:2] if not a.startswith("-"))
    assert code == 2 and err.startswith(f"cdra {name}: error: ") and err.count("\n") == 1, err
    assert str(missing) in err and not out.exists()


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_a_misspelt_option_gets_the_usage_of_its_command(capsys, path):
    with pytest.raises(SystemExit) as stop:
        main([*path, "--no-such-optoin", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"usage: cdra {' '.join(path)} "), err
    assert err.splitlines()[-1].startswith(f"cdra {' '.join(path)}: error: unrecognized arguments: --no-such-optoin")


def test_a_misspelt_option_is_named_even_when_it_was_a_required_one(capsys):
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--inptu", "trees/", "--output", "out"])
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: cdra data prepare ")
    assert err[-1] == "cdra data prepare: error: unrecognized arguments: --inptu (did you mean --input?)"


def test_every_help_describes_its_command_names_subcommands_command_and_shows_no_markup(capsys):
    for path, parser in {(): build_parser(), **commands()}.items():
        text = parser.format_help()
        assert parser.description, f"cdra {' '.join(path)} has no description"
        assert "``" not in text and "ACTION" not in text, path
        if path in GROUPS or not path:
            assert "COMMAND" in parser.format_usage(), path


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_long_running_commands_take_no_progress_and_log_level(path):
    options = {s for action in commands()[path]._actions for s in action.option_strings}
    if " ".join(path) in LONG_RUNNING:
        assert {"--no-progress", "--log-level"} <= options
    if path == ("prm", "serve"):  # a server: no progress bar to hide
        assert "--log-level" in options


def cdra(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdra_plugin.cli", *argv], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT)}, timeout=60)  # fmt: skip


def test_log_level_debug_adds_the_traceback_of_an_error(tmp_path):
    argv = ["data", "prepare", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]
    out = cdra(*argv)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    out = cdra(*argv, "--log-level", "debug")
    assert out.returncode == 2 and "Traceback" in out.stderr
    assert out.stderr.splitlines()[-1].startswith("cdra data prepare: error: --input ")


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_gateway_stops_on_a_signal_with_the_shells_status_and_one_line(tmp_path, signum, status):
    port = free_port()
    log = tmp_path / "gateway.log"
    argv = [sys.executable, "-m", "cdra_plugin.cli", "prm", "serve", "--backend", URL, "--model", "m", "--port",
            str(port)]  # fmt: skip
    proc = start_server(argv, f"http://127.0.0.1:{port}/metrics", log=log, env={"PYTHONPATH": str(ROOT)})
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == status
    assert log.read_text().splitlines()[-1] == f"cdra prm serve: interrupted ({signal.Signals(signum).name})"


def test_python_m_cdra_plugin_cli_is_the_cdra_command():
    out = cdra("traces", "show", "nothing.jsonl")
    assert out.returncode == 2 and out.stderr == "cdra traces show: error: nothing.jsonl: No such file or directory\n"


def test_a_reader_that_goes_away_stops_a_command_as_sigpipe_stops_a_unix_tool():
    """`cdra traces show ... | head`: no traceback and no error line, status 141 (128 + SIGPIPE)."""
    shown = subprocess.Popen(
        [sys.executable, "-m", "cdra_plugin.cli", "traces", "show", "examples/traces/cdpa_sample.jsonl"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    shown.stdout.close()  # gone before the command writes its first line
    assert shown.wait(timeout=60) == 128 + signal.SIGPIPE
    assert shown.stderr.read() == b""
