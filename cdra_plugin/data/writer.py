"""All-or-nothing writing of a set of output files.

Each output is streamed into a hidden temporary file in the target directory (``.<name>.<random>.tmp``); only when
every file has been written, flushed and fsync'ed are they renamed onto their final names with ``os.replace``
(atomic on one filesystem), in the order they were opened, so the last one opened (``stats.json``) appearing marks
a complete set. Any exception before that, a ``KeyboardInterrupt`` included, deletes the temporary files: no
half-written file ever carries an output name, and earlier outputs under those names are left untouched. (A
``SIGKILL`` cannot be caught: it can leave ``.*.tmp`` files, never a partial output.)

    with AtomicFiles(out_dir) as files:
        with files.open("rows.jsonl") as f: ...
        files.write_json("stats.json", stats)
"""

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import TextIO


class AtomicFiles:
    """A group of files committed together on a clean exit of the ``with`` block, discarded otherwise."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._pending: list[tuple[str, Path, TextIO]] = []

    def __enter__(self) -> "AtomicFiles":
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def open(self, name: str) -> TextIO:
        """A text stream for ``name``; closing it early is fine, it is committed with the rest."""
        tmp = self.directory / f".{name}.{secrets.token_hex(6)}.tmp"
        # Created like open(name, "w") would (0o666 less the umask), unlike mkstemp's 0o600, and never reused.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        stream = os.fdopen(fd, "w", encoding="utf-8")
        self._pending.append((name, tmp, stream))
        return stream

    def write_json(self, name: str, obj) -> None:
        with self.open(name) as stream:
            json.dump(obj, stream, indent=2, ensure_ascii=False)
            stream.write("\n")

    def commit(self) -> list[Path]:
        for _, tmp, stream in self._pending:
            stream.close()
            _fsync(tmp)
        committed = []
        for name, tmp, _ in self._pending:
            os.replace(tmp, self.directory / name)
            committed.append(self.directory / name)
        self._pending = []
        return committed

    def abort(self) -> None:
        for _, tmp, stream in self._pending:
            # Closing flushes, which fails again after e.g. a full disk: the file goes either way.
            with contextlib.suppress(OSError):
                stream.close()
            tmp.unlink(missing_ok=True)
        self._pending = []

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def _fsync(path: Path) -> None:
    """Make the bytes durable before the rename, so a crash cannot leave a renamed but empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
