"""One writer per output: an exclusive, non-blocking ``flock`` on a directory or a file, held while a command writes.

    fd = hold(Path("out/eval/policy.judged.jsonl"))   # Busy if another process holds it; a missing file is created
    ...
    os.close(fd)                                       # releases it (so does the process's exit, even a SIGKILL)

``AtomicFiles`` holds its target directory, a resumable output (``cdra eval``, ``cdra prm score``, the ``cdra build``
journal) holds the output file itself, so no lock file is left beside the outputs. A second writer is refused at
once rather than queued: two runs appending to one file would do the same work twice.

A file that was replaced (``os.replace``, as the repair of a torn line does) or removed between ``open`` and
``flock`` is not the file the path names any more: the lock is taken again on the one there now, so a lock on the
path is always a lock on the file a writer will open.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Busy(ValueError):
    """Another process holds the lock (a ValueError: the commands report it as an error in what the user asked)."""

    def __init__(self, path: Path):
        super().__init__(f"{path}: another run is writing it now; wait for it to finish, or write to another file")
        self.path = path


def hold(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock (``Busy`` if another process holds it)."""
    directory = path.is_dir()
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else os.O_CREAT)
    while True:
        fd = os.open(path, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(path) from None
        if directory or _same_file(fd, path):
            return fd
        os.close(fd)  # replaced or removed meanwhile: lock the file the path names now


def still_held(fd: int, path: Path) -> int:
    """``fd`` if it still locks the file at ``path``, else a lock on the file there now; ``fd`` is closed then, also
    when that lock is ``Busy``."""
    if _same_file(fd, path):
        return fd
    try:
        return hold(path)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
