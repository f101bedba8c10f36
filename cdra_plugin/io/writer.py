"""All-or-nothing writing of a SET of files into one directory, safe against interrupts, crashes and a second writer.

    with AtomicFiles(out_dir, replaces=("a.jsonl", "b.jsonl", "stats.json", "plot.png")) as files:
        with files.open("a.jsonl") as f: ...
        files.open("plot.png", "wb").write(png_bytes)
        files.write_json("stats.json", stats)

Renaming N finished files into place is N steps, and a crash between two of them would leave files of two runs
side by side. So the commit is journalled (a redo log):

1. Entering locks the directory (``cdra_plugin.io.lock``; a second writer is refused), finishes a commit that a crash
   interrupted (step 4), and deletes what interrupted runs left: staging directories and the
   ``.<name>.<12 hex>.tmp`` files of earlier versions of this writer.
2. Files are written into a fresh hidden staging directory inside the target (``.cdra-staging-<hex>/``: same
   filesystem, so renames are atomic), then flushed and fsync'ed.
3. Commit point: a journal ``.cdra-commit.json`` naming the staging directory, the files to move in and the
   names of ``replaces`` to delete is written under a temporary name, fsync'ed and renamed into place. Before it
   exists the old set is untouched; once it exists the new set is decided.
4. The files are renamed into place, the stale names deleted, then the journal and the staging directory.

SIGINT and SIGTERM are held back during steps 3-4, so an interrupt never lands inside the
commit: it is delivered when the commit has finished, as :class:`InterruptedAfterCommit`. Only SIGKILL or a power
cut can stop step 4 midway; the journal then remains, readers can see it (:func:`pending_commit`; the recipes
refuse such a directory) and the next writer on the directory completes it first. Any exception before step 3
deletes the staging directory; a target directory (and parents) created by this object is removed again if empty.
"""

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from cdra_plugin.io.lock import Busy, hold

JOURNAL = ".cdra-commit.json"
STAGING_PREFIX = ".cdra-staging-"
INTERRUPTS = {signal.SIGINT, signal.SIGTERM}

logger = logging.getLogger("cdra.data")


class DirectoryError(ValueError):
    """The directory cannot take a new set now: another process is writing there, or its journal is unreadable (a
    ValueError, as ``lock.Busy``: the commands report it as an error in what the user asked)."""


class InterruptedAfterCommit(KeyboardInterrupt):
    """A SIGINT/SIGTERM that arrived during the commit; raised once the complete new set was in place."""


def pending_commit(directory: str | Path) -> Path | None:
    """The journal of a commit a crash interrupted in ``directory``, if any (its files are then a mix of runs)."""
    journal = Path(directory) / JOURNAL
    return journal if journal.exists() else None


class AtomicFiles:
    """A set of files committed together on a clean exit of the ``with`` block, discarded otherwise.

    ``replaces``: names that belong to the set; those not written in this run are deleted by the commit, so the
    directory never keeps, say, a ``prm_sft.jsonl`` beside a ``stats.json`` that does not describe it.
    """

    def __init__(self, directory: str | Path, replaces: Iterable[str] = ()):
        self.directory = Path(directory)
        self.replaces = tuple(replaces)
        self.committed = False
        self._staging: Path | None = None
        self._streams: dict[str, TextIO | BinaryIO] = {}
        self._created: list[Path] = []
        self._lock_fd: int | None = None

    def __enter__(self) -> "AtomicFiles":
        try:
            self._created = make_dirs(self.directory)
            self._lock_fd = _lock(self.directory)
            with _interrupts_held():
                _recover(self.directory)
            _sweep(self.directory, self.replaces)
            self._staging = self.directory / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
            self._staging.mkdir()
        except BaseException:
            self._release()
            raise
        return self

    def open(self, name: str, mode: str = "w") -> TextIO | BinaryIO:
        """A stream for ``name``: text (UTF-8) for ``mode="w"``, bytes for ``"wb"``. Closing it early is fine, it
        is committed with the rest."""
        if mode not in ("w", "wb"):
            raise ValueError(f"mode {mode!r}: expected 'w' (text) or 'wb' (bytes)")
        if name != Path(name).name or name.startswith(".") or name in self._streams:
            raise ValueError(f"{name!r}: expected a new plain file name")
        # Created like open(name, "w") would (0o666 less the umask), unlike mkstemp's 0o600.
        fd = os.open(self._staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._streams[name] = os.fdopen(fd, mode, encoding=None if mode == "wb" else "utf-8")
        return self._streams[name]

    def write_json(self, name: str, obj) -> None:
        with self.open(name) as stream:
            json.dump(obj, stream, indent=2, ensure_ascii=False)
            stream.write("\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                with _interrupts_held():
                    self._commit()
        except KeyboardInterrupt as interrupt:
            if self.committed:
                raise InterruptedAfterCommit(*interrupt.args) from None
            raise
        finally:
            self._release()

    def _commit(self) -> None:
        for stream in self._streams.values():
            stream.close()
        for name in self._streams:
            _fsync(self._staging / name)
        _fsync(self._staging)
        written = list(self._streams)
        journal = {"staging": self._staging.name, "files": written, "remove": sorted(set(self.replaces) - {*written})}
        tmp = self.directory / f"{JOURNAL}.tmp"
        tmp.write_text(json.dumps(journal), encoding="utf-8")
        _fsync(tmp)
        os.replace(tmp, self.directory / JOURNAL)  # the commit point
        _fsync(self.directory)
        self.committed = True
        _apply(self.directory, journal)

    def _release(self) -> None:
        """Drop what an uncommitted run wrote, unlock, and remove directories this object created if empty."""
        for stream in self._streams.values():
            with contextlib.suppress(OSError):  # closing flushes, which fails again after e.g. a full disk
                stream.close()
        if self._staging is not None and not self.committed:
            shutil.rmtree(self._staging, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        if not self.committed:
            for created in reversed(self._created):
                with contextlib.suppress(OSError):  # not empty (another process wrote there): keep it
                    created.rmdir()


def make_dirs(directory: Path) -> list[Path]:
    """``mkdir -p``, returning the directories it created, outermost first."""
    missing = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return list(reversed(missing))


def _lock(directory: Path) -> int:
    try:
        return hold(directory)
    except Busy:
        raise DirectoryError(
            f"{directory}: another process is writing there now; wait for it or choose another directory"
        ) from None


def _apply(directory: Path, journal: dict) -> None:
    """Step 4; idempotent, so a crash inside it is repaired by running it again."""
    staging = directory / journal["staging"]
    for name in journal["files"]:
        if (staging / name).exists():
            os.replace(staging / name, directory / name)
    for name in journal["remove"]:
        (directory / name).unlink(missing_ok=True)
    _fsync(directory)
    (directory / JOURNAL).unlink()
    _fsync(directory)
    shutil.rmtree(staging, ignore_errors=True)


def _recover(directory: Path) -> None:
    journal_path = pending_commit(directory)
    if journal_path is None:
        return
    try:
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
        names = [journal["staging"], *journal["files"], *journal["remove"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DirectoryError(
            f"{journal_path}: unreadable commit journal ({exc}); check the files beside it, then delete it"
        ) from None
    if any(not isinstance(name, str) or name != Path(name).name or name in ("", ".", "..") for name in names):
        raise DirectoryError(
            f"{journal_path}: names outside {directory} in a commit journal; check it, then delete it"
        )
    _apply(directory, journal)
    logger.warning("%s: completed a commit that a crash had interrupted (%s)", directory, ", ".join(journal["files"]))


def _sweep(directory: Path, names: Iterable[str]) -> None:
    legacy = re.compile(rf"^\.({'|'.join(map(re.escape, names))})\.[0-9a-f]{{12}}\.tmp$") if names else None
    count = size = 0
    for entry in directory.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
            size += sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            shutil.rmtree(entry)
        elif entry.name == f"{JOURNAL}.tmp" or (legacy and legacy.match(entry.name) and entry.is_file()):
            size += entry.stat().st_size
            entry.unlink()
        else:
            continue
        count += 1
    if count:
        logger.warning(
            "%s: removed %d temporary file(s) or folder(s), %.1f MB, left by an interrupted run",
            directory,
            count,
            size / 1e6,
        )


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside the block are handled when it ends, as they would have been.

    Python runs signal handlers in the main thread only, so swapping the handlers there defers them whichever
    thread the kernel delivered the signal to (a thread's signal mask would not: tqdm and others run threads).
    Elsewhere nothing can interrupt the commit anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    handled = [signum for signum in INTERRUPTS if signal.getsignal(signum) is not None]  # None: set outside Python
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum)) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held[:1]:
            signal.raise_signal(signum)  # the restored handler runs now: KeyboardInterrupt, or the default exit


def _fsync(path: Path) -> None:
    """Make bytes (or directory entries) durable before the next step depends on them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
