"""JSON Lines files: strict reading of inputs, and the resumable outputs of ``cdra prm score``, ``cdra eval`` and
``cdra build`` (its journal).

    rows = read_rows(Path("eval.jsonl"), "--data")              # [(line number, object)], ValueError naming file:line
    done = resume_rows(out, required=("id",))                   # what an earlier run wrote, the file made appendable
    with Appender(out) as writer:
        writer.write({"id": "a", ...})                          # durable when it returns

A resumable output is appended one record at a time, each flushed and fsync'ed as soon as it is complete, so an
interrupt (Ctrl-C, a kill, a crash) loses at most the line being written. ``resume_rows`` reads what is there before
a run appends to it:

- a torn last line (no newline and not a whole record: a write cut short) is removed, with a warning, and its work
  is done again; a whole last record whose newline was lost gets one, so the next record is not glued to it;
- ``drop`` removes records the caller wants done again (``cdra prm score --retry-failed``);
- any other line that is not a record is an error naming file:line: the file is not what the caller thinks, and
  nothing in it is touched.

Those repairs replace the file atomically (a whole copy under a temporary name, fsync'ed, then ``os.replace``), so
a crash during a repair leaves the old file or the new one. Lines end at ``\\n`` only: a record may hold U+2028 or
other characters that ``str.splitlines`` would split at, and a last line cut inside a multi-byte character is torn,
not a decoding error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger("cdra.jsonl")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as ``surrogateescape`` decodes them


def read_rows(path: Path, option: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; ``ValueError`` naming ``option``, file and line otherwise."""
    if not path.is_file():
        raise ValueError(f"{option} {path}: no such file")
    rows = []
    # surrogateescape: a byte that is not UTF-8 becomes a lone surrogate in its line, so the error can name the line
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if not line.isascii() and _UNDECODABLE.search(line):
                raise ValueError(f"{path}:{n}: not valid UTF-8 text; save the file as UTF-8")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            except (ValueError, RecursionError):  # an integer too long to convert, or nesting too deep
                raise ValueError(f"{path}:{n}: JSON too deeply nested or with too long a number") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: a row must be a JSON object, got {type(row).__name__}")
            rows.append((n, row))
    return rows


def resume_rows(
    path: Path,
    *,
    required: tuple[str, ...] = (),
    drop: Callable[[dict], bool] | None = None,
    what: str = "a record this command wrote",
    hint: str = "is --output the right file?",
) -> list[dict]:
    """The records of the output ``path`` (none if it does not exist), after the repairs of the module docstring.

    A record is a JSON object holding the ``required`` keys; records for which ``drop`` is true are removed from
    the file and not returned. A damaged line that is not the last raises ``ValueError``:
    ``"<path>:<line>: not <what>; <hint>"``.
    """
    if not path.exists():
        return []
    rows, removed, newline_lost = [], set(), False
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            row = _record(line, required)
            whole = line.endswith(b"\n")
            if row is None and whole:
                raise ValueError(f"{path}:{n}: not {what}; {hint}")
            if row is None:
                logger.warning("%s: removing the torn last line (an interrupted write) before resuming", path)
                removed.add(n)
            elif drop is not None and drop(row):
                removed.add(n)
            else:
                rows.append(row)
                newline_lost = not whole
    if removed or newline_lost:
        _rewrite(path, removed)
    return rows


def _record(line: bytes, required: tuple[str, ...]) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for a line cut inside a character
        return None
    return row if isinstance(row, dict) and all(key in row for key in required) else None


def _rewrite(path: Path, removed: set[int]) -> None:
    """``path`` without the lines numbered in ``removed``, every line ending in a newline; replaced atomically."""
    with path.open("rb") as src, _replacing(path) as dst:
        for n, line in enumerate(src, start=1):
            if n not in removed:
                dst.write(line if line.endswith(b"\n") else line + b"\n")


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` (keeping its permissions) when the block ends cleanly."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), path.stat().st_mode & 0o7777)  # mkstemp makes it 0o600: keep the output's mode
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself is durable before anything is appended to the new file
    finally:
        os.close(directory)


class Appender:
    """``with Appender(path) as out: out.write(record)``: one JSON line per record, durable when ``write`` returns.

    The file (and its directory) is created by the first ``write``, so a run that writes nothing leaves nothing.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def __enter__(self) -> Appender:
        return self

    def write(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __exit__(self, *exc) -> None:
        self.close()
