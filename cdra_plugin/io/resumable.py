"""The resumable output of ``cdra eval generate``, ``cdra eval judge`` (and its answer cache), ``cdra prm score`` and
the ``cdra build`` journal: what earlier runs finished is read back and skipped, what this run finishes is appended.

    with ResumableOutput(path, key=lambda r: (r["id"], r["sample"]), what="a response row") as out:
        todo = [job for job in jobs if job.key not in out.done]         # done: key -> the record an earlier run wrote
        for job in todo:
            out.write(run(job))                                        # durable when it returns, and in out.done

Entering:

1. locks the file (``cdra_plugin.io.lock``): a second run writing the same output is refused, not interleaved;
2. reads it back (``resume_rows``: a torn last line, the trace of a kill, is removed; any other damage is an error
   naming the line);
3. ``check(kept)`` may refuse the output (rows of another model, judge or prompt set: mixing them would make the
   file say nothing), and only then are the records ``redo`` selects removed (``--retry-failed``), in one atomic
   rewrite; a refused output is left as it was;
4. ``key(record)`` indexes ``done`` (a key of ``None``: a record that is not a unit of work, like the journal's run
   entries; ``records`` holds every record kept, in file order).

A run that writes nothing leaves nothing: the file (and the folders) created to hold the lock are removed again
when they are still empty at the end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable
from pathlib import Path

from cdra_plugin.io.jsonl import Appender, resume_rows
from cdra_plugin.io.lock import hold, still_held
from cdra_plugin.io.writer import make_dirs


class ResumableOutput:
    """A JSON Lines output continued by every rerun; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        key: Callable[[dict], Hashable | None],
        what: str = "a record this command wrote",
        hint: str = "is --output the right file?",
        required: tuple[str, ...] = (),
        check: Callable[[list[dict]], None] | None = None,
        redo: Callable[[dict], bool] | None = None,
    ):
        self.path = Path(path)
        self.key, self.what, self.hint, self.required = key, what, hint, required
        self.check, self.redo = check, redo
        self.records: list[dict] = []
        self.done: dict = {}
        self.redone: list[dict] = []  # the records removed for ``redo``, to be done again
        self._fd: int | None = None
        self._created: list[Path] = []
        self._new_file = False
        self._out = Appender(self.path)

    def __enter__(self) -> ResumableOutput:
        try:
            self._created = make_dirs(self.path.parent)
            self._new_file = not self.path.exists()
            self._fd = hold(self.path)
            self.records = self._read()
            self.done = {}
            for record in self.records:
                self._index(record)
        except BaseException:
            self._release()
            raise
        return self

    def _read(self) -> list[dict]:
        records = resume_rows(self.path, required=self.required, what=self.what, hint=self.hint)
        self._fd = still_held(self._fd, self.path)  # a repair replaces the file: the lock follows it
        redo = self.redo or (lambda record: False)
        kept = [record for record in records if not redo(record)]
        if self.check is not None:
            self.check(kept)  # before anything is removed: a refused output stays as it was
        self.redone = [record for record in records if redo(record)]
        if self.redone:
            resume_rows(self.path, required=self.required, drop=redo, what=self.what, hint=self.hint)
            self._fd = still_held(self._fd, self.path)
        return kept

    def _index(self, record: dict) -> None:
        try:
            key = self.key(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: not {self.what} ({type(exc).__name__}: {exc}); {self.hint}") from None
        if key is not None:
            self.done[key] = record

    def write(self, record: dict) -> None:
        """Append ``record`` (flushed and fsync'ed) and count it as done."""
        self._out.write(record)
        self._index(record)

    def __exit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        self._out.close()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if self._new_file and self.path.stat().st_size == 0:
                    self.path.unlink()  # still locked: no other run can be using it
            os.close(self._fd)
            self._fd = None
        for created in reversed(self._created):
            with contextlib.suppress(OSError):  # not empty: keep it
                created.rmdir()
