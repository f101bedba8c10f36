"""The outputs of `cdra data prepare` are one set, all or nothing: interrupts, crashes, full disks, a second writer.

Subprocess tests stop a real run at an exact point of its writing: a small driver installs a Python audit hook (it
sees every ``open`` and ``rename`` the run makes) that either pauses there until the test sends a real SIGINT or
SIGTERM, sends one itself, or kills the process with SIGKILL as a crash or the OOM killer would.
"""

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cdra_plugin.cli import main
from cdra_plugin.io.writer import JOURNAL, AtomicFiles, pending_commit

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "cdra_plugin" / "demo" / "samples"
OUTPUTS = sorted(["prm_sft.jsonl", "rft.jsonl", "rl_prompts.jsonl", "eval.jsonl", "stats.json"])
PREPARE = ["data", "prepare", "--input", str(SAMPLE), "--eval-size", "2"]

DRIVER = r"""
import os, signal, sys, time
from cdra_plugin.cli import main

action, point = sys.argv[1:3]  # action: pause | sigint | kill; point: open:<name> | commit | move:<n>
moves, fired = 0, False

def hook(event, args):
    global moves, fired
    if fired or event not in ("open", "os.rename"):
        return
    path = str(args[0])
    if event == "os.rename" and ".cdra-staging-" in path:
        moves += 1
    hit = (
        (event == "open" and point == "open:" + os.path.basename(path))
        or (event == "os.rename" and point == "commit" and str(args[1]).endswith(".cdra-commit.json"))
        or (event == "os.rename" and point == f"move:{moves}" and ".cdra-staging-" in path)
    )
    if not hit:
        return
    fired = True
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
    else:
        print("paused", flush=True)
        time.sleep(60)

sys.addaudithook(hook)
sys.exit(main(sys.argv[3:]))
"""


def start(action: str, point: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", DRIVER, action, point, *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def prepared(directory: Path, *extra: str) -> dict[str, bytes]:
    assert main([*PREPARE, "--output", str(directory), "--no-progress", *extra]) == 0
    return snapshot(directory)


def snapshot(directory: Path) -> dict[str, bytes]:
    """The visible files (what a reader of the outputs sees)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name[0] != "."}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "cdra_plugin.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "signum, status, fresh, point",
    [(signal.SIGINT, 130, False, "open:prm_sft.jsonl"), (signal.SIGTERM, 143, True, "open:stats.json")],
)
def test_an_interrupt_while_writing_prints_one_line_and_changes_nothing(tmp_path, signum, status, fresh, point):
    out = tmp_path / "nested" / "out"
    before = {} if fresh else prepared(out)
    progress = ["--no-progress"] if signum == signal.SIGINT else []  # with the bar, the message gets its own line
    proc = start("pause", point, *PREPARE, "--output", str(out), "--overwrite", *progress)
    assert proc.stdout.readline() == "paused\n"
    proc.send_signal(signum)
    code, _, err = finish(proc)
    name = signal.Signals(signum).name
    assert code == status
    expected = f"cdra data prepare: interrupted ({name}); nothing in {out} was written or changed"
    if progress:
        assert err == expected + "\n"  # one line, no traceback
    else:
        assert err.splitlines()[-1] == expected and "Traceback" not in err
    if fresh:
        assert not (tmp_path / "nested").exists()  # the folders it created are gone again
    else:
        assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == OUTPUTS


def test_ctrl_c_in_any_cdra_command_prints_one_line(tmp_path):
    proc = start("pause", "open:cot_Finance_preferences.json", "data", "validate", "--input", str(SAMPLE))
    assert proc.stdout.readline() == "paused\n"
    proc.send_signal(signal.SIGINT)
    assert finish(proc) == (130, "", "cdra data validate: interrupted (SIGINT)\n")


def test_a_crash_between_two_renames_is_completed_by_the_next_run(tmp_path):
    out, reference = tmp_path / "out", prepared(tmp_path / "reference", "--seed", "5")
    before = prepared(out)
    code, _, _ = finish(start("kill", "move:2", *PREPARE, "--output", str(out), "--overwrite", "--seed", "5"))
    assert code == -signal.SIGKILL
    # The crash left one file of the new run beside four of the old: the journal says so.
    mixed = snapshot(out)
    assert [n for n in OUTPUTS if mixed[n] == reference[n] != before[n]] == ["prm_sft.jsonl"]
    assert pending_commit(out) == out / JOURNAL
    # Any next run on the folder first completes the commit (this one then refuses to overwrite, as asked).
    proc = cli(*PREPARE, "--output", str(out), "--no-progress")
    assert proc.returncode == 2 and "already holds" in proc.stderr
    assert f"WARNING cdra.data: {out}: completed a commit that a crash had interrupted" in proc.stderr
    assert snapshot(out) == reference and sorted(p.name for p in out.iterdir()) == OUTPUTS  # no hidden leftovers


def test_a_crash_before_the_commit_keeps_the_old_set_and_the_next_run_sweeps_temporaries(tmp_path):
    out = tmp_path / "out"
    before = prepared(out)
    code, _, _ = finish(start("kill", "commit", *PREPARE, "--output", str(out), "--overwrite", "--seed", "5"))
    assert code == -signal.SIGKILL
    assert snapshot(out) == before and pending_commit(out) is None
    assert sorted(p.name[:14] for p in out.iterdir() if p.name[0] == ".") == [".cdra-commit.j", ".cdra-staging-"]
    # Earlier versions of the writer left .<name>.<12 hex>.tmp files after a SIGTERM: swept too, nothing else is.
    (out / ".prm_sft.jsonl.0123456789ab.tmp").write_bytes(b"x" * 1_000_000)
    (out / ".notes.0123456789ab.tmp").write_text("not ours")
    proc = cli(*PREPARE, "--output", str(out), "--no-progress", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "removed 3 temporary file(s) or folder(s)" in proc.stderr and "left by an interrupted run" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".notes.0123456789ab.tmp", *OUTPUTS]


def test_an_interrupt_during_the_commit_waits_for_its_end(tmp_path):
    out, reference = tmp_path / "out", prepared(tmp_path / "reference", "--seed", "5")
    prepared(out)
    cmd = (*PREPARE, "--output", str(out), "--overwrite", "--seed", "5", "--no-progress")
    code, _, err = finish(start("sigint", "move:1", *cmd))
    assert code == 130
    assert err == f"cdra data prepare: interrupted (SIGINT); {out} had already received this run's complete set\n"
    assert snapshot(out) == reference and sorted(p.name for p in out.iterdir()) == OUTPUTS


def test_a_second_writer_is_refused_while_one_writes(tmp_path, capsys):
    out = tmp_path / "out"
    with AtomicFiles(out) as files:
        files.write_json("x.json", {})
        assert main([*PREPARE, "--output", str(out), "--no-progress"]) == 2
    assert f"cdra data prepare: error: {out}: another process is writing there now" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["x.json"]


def test_atomic_files_commit_together_or_not_at_all(tmp_path):
    target = tmp_path / "a" / "b"
    with pytest.raises(KeyboardInterrupt):
        with AtomicFiles(target) as files:
            files.open("a.jsonl").write("new\n" * 1000)
            raise KeyboardInterrupt
    assert not (tmp_path / "a").exists()  # it created a/ and a/b/: both gone
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "a.jsonl").write_text("old\n")
    (tmp_path / "keep" / "stale.json").write_text("{}")
    with pytest.raises(OSError):
        with AtomicFiles(tmp_path / "keep", replaces=["stale.json"]) as files:
            files.open("a.jsonl").write("new\n")
            raise OSError("disk full")
    assert snapshot(tmp_path / "keep") == {"a.jsonl": b"old\n", "stale.json": b"{}"}
    with AtomicFiles(tmp_path / "keep", replaces=["stale.json"]) as files:
        files.open("a.jsonl").write("new\n")
        files.write_json("s.json", {"k": 1})
        with pytest.raises(ValueError, match="plain file name"):
            files.open("../escape.json")
    assert snapshot(tmp_path / "keep") == {"a.jsonl": b"new\n", "s.json": b'{\n  "k": 1\n}\n'}  # stale.json went
    assert oct((tmp_path / "keep" / "s.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_binary_files_commit_byte_for_byte_with_the_text_files(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\xff\xfe not UTF-8 \r\n"  # what text mode would refuse or translate
    target = tmp_path / "report"
    with pytest.raises(RuntimeError):
        with AtomicFiles(target) as files:
            files.open("radar.png", "wb").write(png)
            raise RuntimeError("the figure failed")
    assert not target.exists()  # nothing of the set, no folder
    with AtomicFiles(target) as files:
        with files.open("radar.png", "wb") as stream:
            stream.write(png)
        files.open("report.md").write("é\n")
        with pytest.raises(ValueError, match="expected 'w' \\(text\\) or 'wb' \\(bytes\\)"):
            files.open("x.png", "ab")
    assert snapshot(target) == {"radar.png": png, "report.md": "é\n".encode()}


@pytest.mark.parametrize(
    "journal, problem",
    [("{not json", "unreadable commit journal"), ('{"staging": "../x", "files": [], "remove": []}', "names outside")],
)
def test_a_damaged_journal_stops_the_next_run_with_one_line(tmp_path, capsys, journal, problem):
    out = tmp_path / "out"
    before = prepared(out)
    (out / JOURNAL).write_text(journal)
    assert main([*PREPARE, "--output", str(out), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cdra data prepare: error: {out / JOURNAL}: {problem}") and err.count("\n") == 1
    assert snapshot(out) == before


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_size_limit(limit: int):
    def apply():
        # The kernel then fails writes past `limit` bytes with EFBIG (a real "disk full" midway through a file).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_write_failure_midway_leaves_no_output_and_keeps_old_outputs(tmp_path):
    cmd = [sys.executable, "-m", "cdra_plugin.cli", *PREPARE, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    limit = _file_size_limit(20_000)
    fresh = tmp_path / "fresh"
    proc = subprocess.run(cmd + ["--output", str(fresh)], capture_output=True, text=True, preexec_fn=limit, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "writing" in proc.stderr and "failed" in proc.stderr and "no output file was written" in proc.stderr
    assert not fresh.exists()  # no output, no temporary file, no empty folder

    old = tmp_path / "old"
    before = prepared(old, "--eval-size", "3")
    proc = subprocess.run(cmd + ["--output", str(old), "--overwrite"], capture_output=True, preexec_fn=limit, env=env)
    assert proc.returncode == 1
    assert snapshot(old) == before and sorted(p.name for p in old.iterdir()) == OUTPUTS
