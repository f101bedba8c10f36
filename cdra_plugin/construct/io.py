"""Files of ``cdra build``: the (P, q) inputs, the resumable journal, and the DeepPref files compiled from it.

Inputs (``read_pairs``): a PrefEval-style JSON file (a list of ``{"preference", "question", ...}``), a folder of them
(``../shared/data/prefeval_explicit/``: the topic is the file name) or JSON Lines rows ``{"preference",
"question", "topic"?}`` (without ``topic``, the file name). Files are found and read by ``cdra_plugin.data.loader``;
bad input raises its ``RecordError`` (file, record, field) before any model call. The same (P, q) twice is built
once. A scenario's ``key`` is a hash of (P, q): the journal is keyed by content, not by position, so reordering or
extending the input never rebuilds or mixes up a finished scenario.

Output directory::

    OUT/cot_<Topic>_preferences.json   DeepPref records per topic: what `cdra data prepare --input OUT` reads
    OUT/build/build_stats.json         counts: scenarios, nodes, pruning, failures by kind, calls, tokens, time
    OUT/build/journal.jsonl            one line per finished scenario (built or skipped), then one per run
    OUT/build/config.json              the options that shape a tree; a resume must use the same ones

The state lives in ``build/`` because ``cdra data prepare --input OUT`` reads every ``.json``/``.jsonl`` file of
OUT. Each finished scenario is appended to the journal, flushed and fsync'ed, so an interrupt loses at most the
scenarios in flight; a torn last line (a kill during the write) is removed on the next start, and the journal is
locked while a build runs (one build per directory at a time; ``cdra_plugin.io.resumable``). The topic files and
``build_stats.json`` are compiled from the whole journal with ``AtomicFiles`` at the end of a run: an interrupted
run leaves the previous ones untouched, and a file under a final name is always whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

from cdra_plugin.construct.tree import Pair
from cdra_plugin.data.loader import read_records, resolve_inputs
from cdra_plugin.data.schema import FieldError, RecordError, parse_pair, require_text
from cdra_plugin.io.lock import Busy
from cdra_plugin.io.resumable import ResumableOutput
from cdra_plugin.io.writer import AtomicFiles

STATE_DIR = "build"
JOURNAL = "journal.jsonl"
CONFIG = "config.json"
STATS = "build_stats.json"
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class BuildError(ValueError):
    """A build that cannot start or continue (bad output directory, a journal from other options)."""


def topic_file(topic: str) -> str:
    return f"cot_{topic}_preferences.json"


def scenario_key(preference: str, question: str) -> str:
    return hashlib.sha256(json.dumps([preference, question]).encode()).hexdigest()[:20]


def read_pairs(spec: str | Path) -> tuple[list[Pair], int]:
    """Every distinct (P, q) of the input, in input order, and the number of exact duplicates left out."""
    pairs, seen, duplicates = [], set(), 0
    for path in resolve_inputs(spec):
        for index, raw in enumerate(read_records(path)):
            if isinstance(raw, RecordError):
                raise raw
            try:
                pair = _pair(raw, path, index)
            except FieldError as exc:
                raise RecordError(str(path), index, exc.field, exc.message) from None
            if pair.key in seen:
                duplicates += 1
                continue
            seen.add(pair.key)
            pairs.append(pair)
    return pairs, duplicates


def _pair(raw, path: Path, index: int) -> Pair:
    record = parse_pair(raw, f"{path.stem}/{index}", path.stem)
    topic = require_text(raw, "topic") if "topic" in raw else path.stem
    if not _TOPIC.fullmatch(topic):
        where = "topic" if "topic" in raw else "file name"
        raise FieldError("topic", f"{topic!r} (from the {where}) names an output file: use letters, digits, _ . -")
    source = {"file": path.name, "index": index}
    return Pair(scenario_key(record.preference, record.question), topic, record.preference, record.question, source)


class Journal:
    """The append-only record of finished scenarios (last entry per key wins) and of runs.

    Used as a context manager (``cdra_plugin.io.resumable``): it locks the journal while open, so two builds never
    write it at once (the second stops with an error), and repairs what an interrupted run left.
    """

    def __init__(self, directory: Path):
        self.path = directory / JOURNAL
        self._out = ResumableOutput(
            self.path,
            key=lambda entry: entry["key"] if entry["type"] == "scenario" else None,
            what="a journal entry",
            hint="is --output a cdra build?",
            required=("type",),
        )

    def __enter__(self) -> Journal:
        try:
            self._out.__enter__()
        except Busy:
            raise BuildError(
                f"another cdra build is writing {self.path}: wait for it, or use another --output"
            ) from None
        return self

    def load(self) -> tuple[dict[str, dict], list[dict]]:
        """(scenario entries by key, run entries), as the journal held them when it was opened."""
        return dict(self._out.done), [entry for entry in self._out.records if entry["type"] != "scenario"]

    def append(self, entry: dict) -> None:
        """Append, flush and fsync one entry."""
        self._out.write(entry)

    def __exit__(self, *exc) -> None:
        self._out.__exit__(*exc)


def check_output(output: Path, config: dict) -> Path:
    """``OUT/build/``, after checking that an existing build there used the same ``config`` (nothing is written)."""
    if output.exists() and not output.is_dir():
        raise BuildError(f"--output {output} exists and is not a directory")
    config = json.loads(json.dumps(config))  # as it reads back (tuples are lists)
    state = output / STATE_DIR
    saved_path = state / CONFIG
    if saved_path.exists():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        changed = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: built with {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise BuildError(
                f"--output {output} holds a build made with other options ({detail}): use the same options to "
                "resume it, or another --output"
            )
        return state
    foreign = sorted(p.name for p in output.glob("*.json*")) if output.is_dir() else []
    if foreign:
        raise BuildError(
            f"--output {output} already holds {', '.join(foreign[:3])} but no {STATE_DIR}/{CONFIG}: it is not a "
            "cdra build; choose an empty or new directory"
        )
    return state


def save_config(state: Path, config: dict) -> None:
    """Record the tree options of a new build (once the build is about to start, so a failed start binds nothing)."""
    if not (state / CONFIG).exists():
        with AtomicFiles(state) as files:
            files.write_json(CONFIG, config)


def compile_outputs(output: Path, entries: dict[str, dict], stats: dict) -> list[Path]:
    """Write every built scenario of the journal into its topic file, and ``build_stats.json``, all or nothing.

    Records are ordered by (topic, source file, index in it), so the files do not depend on the order in which
    scenarios finished or on how many runs built them.
    """
    by_topic = defaultdict(list)
    for entry in entries.values():
        if entry["status"] == "built":
            by_topic[entry["topic"]].append(entry["record"])
    with AtomicFiles(output / STATE_DIR) as state, AtomicFiles(output) as trees:
        for topic in sorted(by_topic):
            records = sorted(by_topic[topic], key=lambda r: (r["source"]["file"], r["source"]["index"]))
            with trees.open(topic_file(topic)) as stream:
                json.dump(records, stream, indent=1, ensure_ascii=False)
                stream.write("\n")
        state.write_json(STATS, stats)
    return [output / topic_file(t) for t in sorted(by_topic)]
