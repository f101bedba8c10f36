"""JSON Lines in and out for the evaluation: strict reading, and resumable outputs.

A resumable output is appended one record at a time, each flushed and fsync'ed as soon as it is complete, so an
interrupt (Ctrl-C, a kill, a crash) loses at most the line being written. On the next run ``resume_rows`` reads what
is there: a torn last line (no newline, not JSON) is removed atomically with a warning and its work is done again;
any other unreadable line means the file is not what the caller thinks, and is an error naming it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger("cdra.eval")


def read_rows(path: Path, option: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; ``ValueError`` naming ``option``, file and line otherwise."""
    if not path.is_file():
        raise ValueError(f"{option} {path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: a row must be a JSON object, got {type(row).__name__}")
            rows.append((n, row))
    return rows


def resume_rows(path: Path) -> list[dict]:
    """The records already in the output ``path`` (none if it does not exist), after repairing a torn last line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = []
    for n, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
        except ValueError:  # JSONDecodeError included
            if n != len(lines) or line.endswith("\n"):
                raise ValueError(f"{path}:{n}: not a record this command wrote; is --output the right file?") from None
            logger.warning("%s: removing the torn last line (an interrupted write) before resuming", path)
            _atomic_write(path, "".join(lines[:-1]))
            return rows
        rows.append(row)
    if lines and not lines[-1].endswith("\n"):  # a whole record whose newline was lost: the next append needs one
        with path.open("a", encoding="utf-8") as f:
            f.write("\n")
    return rows


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Appender:
    """``with Appender(path) as out: out.write(record)``: one JSON line per record, durable when ``write`` returns."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Appender:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc) -> None:
        self._file.close()
