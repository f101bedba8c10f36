"""Reading DeepPref and PrefEval files: one file, a directory or a glob, JSON lists or JSON Lines.

- DeepPref: the released files are JSON lists of scenario records, one file per topic named
  ``cot_<Topic>_preferences.json``; the topic is ``<Topic>`` (other names: the file stem).
- PrefEval (explicit preferences): one JSON list per topic, ``<topic>.json``, records
  ``{"preference", "question", "explanation"}``.

Each record gets a stable id ``<topic>/<index in file>``. Bad input raises :class:`RecordError` naming the file,
the record index and the field; with ``skip_invalid`` the bad record (or an unreadable file) is skipped and
recorded in :attr:`Loaded.skipped` instead, so the caller can report the count at the end. A path that names no
input file at all (or two files of one topic) raises :class:`InputError`, which ``skip_invalid`` does not skip.

    from cdra_plugin.data.loader import load_deeppref
    loaded = load_deeppref("trees/", skip_invalid=True)
"""

import glob
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cdra_plugin.data.schema import FieldError, RecordError, parse_pair, parse_scenario

DEEPPREF_NAME = re.compile(r"^cot_(?P<topic>.+)_preferences$")
SUFFIXES = (".json", ".jsonl")


class InputError(ValueError):
    """The input path itself is unusable: nothing there, no data file in it, or two files for one topic."""


@dataclass
class Loaded:
    """Valid records in input order, the skipped ones (as errors) and the files read."""

    records: list = field(default_factory=list)
    skipped: list[RecordError] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def resolve_inputs(spec: str | Path) -> list[Path]:
    """A file, the ``*.json``/``*.jsonl`` files of a directory (not recursive) or those a glob matches."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise InputError(f"{path}: the directory has no .json or .jsonl file")
        return files
    if glob.has_magic(str(spec)):
        matches = (Path(p) for p in glob.glob(str(spec), recursive=True))
        files = sorted(p for p in matches if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise InputError(f"{spec}: the pattern matches no .json or .jsonl file")
        return files
    raise InputError(f"{spec}: no such file or directory")


def deeppref_topic(path: Path) -> str:
    match = DEEPPREF_NAME.match(path.stem)
    return match.group("topic") if match else path.stem


def read_records(path: Path) -> list:
    """The raw records of one file: a JSON list, or one JSON value per non-blank line for ``.jsonl``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(str(path), None, None, f"cannot read: {exc}") from exc
    if path.suffix == ".jsonl":
        return [_json_line(path, i, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(
            str(path), None, None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, list):
        raise RecordError(str(path), None, None, f"must hold a JSON list of records, got {type(data).__name__}")
    return data


def _json_line(path: Path, index: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        # The bad line stays in the list as an error, so record indices keep matching line numbers.
        return RecordError(str(path), index, None, f"invalid JSON at column {exc.colno}: {exc.msg}")


def _load(spec, topic_of: Callable[[Path], str], parse: Callable, skip_invalid: bool) -> Loaded:
    loaded = Loaded()
    topic_files: dict[str, Path] = {}
    for path in resolve_inputs(spec):
        topic = topic_of(path)
        if topic in topic_files:
            raise InputError(f"{path}: topic {topic!r} already comes from {topic_files[topic]} (one file per topic)")
        topic_files[topic] = path
        loaded.files.append(str(path))
        try:
            raws = read_records(path)
        except RecordError as exc:
            if not skip_invalid:
                raise
            loaded.skipped.append(exc)
            continue
        for index, raw in enumerate(raws):
            try:
                if isinstance(raw, RecordError):
                    raise raw
                try:
                    loaded.records.append(parse(raw, f"{topic}/{index}", topic))
                except FieldError as exc:
                    raise RecordError(str(path), index, exc.field, exc.message) from None
            except RecordError as exc:
                if not skip_invalid:
                    raise
                loaded.skipped.append(exc)
    return loaded


def load_deeppref(spec: str | Path, skip_invalid: bool = False) -> Loaded:
    """DeepPref scenarios (:class:`Scenario`) from a file, directory or glob."""
    return _load(spec, deeppref_topic, parse_scenario, skip_invalid)


def load_prefeval(spec: str | Path, skip_invalid: bool = False) -> Loaded:
    """PrefEval pairs (:class:`PreferencePair`) from a directory of ``<topic>.json`` files (or a file or glob)."""
    return _load(spec, lambda path: path.stem, parse_pair, skip_invalid)
