"""Critique traces: the natural-language feedback behind CDPA's numbers, kept for people to read.

The PRM writes a critique c_j before each score r_j (paper Section 2.3); CDPA trains on the scores only (Section
2.4, Eq. 3). A trace keeps, for a sampled response, its steps, the critiques and scores the PRM gave them, and the
mean CDPA advantage each step received, so that "why did this step get pushed down?" has an answer.

This module is the trace *format*, with no host import: ``cdra-train`` writes it
(``cdra_plugin.openrlhf.tracer``, ``--cdpa.trace_path``), so can any other producer (a demo, another trainer), and
``cdra traces show`` (``cdra_plugin.traces.cli``) reads it.

A trace file is JSON Lines, UTF-8, one record per traced response, appended::

    {"prompt_id": "travel/3", "failed": false,
     "steps": ["You value calm.", "Go to Lofoten."],          # step texts, markers removed
     "scores": [0.8, 0.2],                                     # r_j per step; null where unknown
     "mean_advantage": [0.7071, -0.7071],                      # mean CDPA advantage of the step's tokens; null if none
     "critiques": ["Reasoning: ...\\nSCORE: 0.8", "..."]}     # c_j per step (first of k), or null

- ``prompt_id``: string, integer or null (the DeepPref label's ``id``);
- ``failed``: true when the response took no part in the update (its PRM scoring failed, or the trainer's steps
  did not match the gateway's); its ``scores`` are then null (none that belong to these steps) and its advantage 0;
- ``steps``: list of strings; ``scores`` and ``mean_advantage``: lists of finite numbers or nulls, one per step;
- ``critiques``: null (not available: no gateway cache to read, or the result left it) or a list with one string
  or null per step.

Other keys are allowed and ignored by readers. ``append_trace`` rotates the file to ``<path>.1`` (one generation
kept) before a record would take it past ``max_bytes``, so a long run never fills the disk.
"""

import json
import math
import os
from pathlib import Path

FIELDS = ("prompt_id", "failed", "steps", "scores", "mean_advantage", "critiques")


def trace_problem(record) -> str | None:
    """Why ``record`` (a parsed JSON value) is not a trace record, in a few words; None when it is one."""
    if not isinstance(record, dict):
        return f"a trace record is a JSON object, got {type(record).__name__}"
    missing = [key for key in FIELDS if key not in record]
    if missing:
        return "missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(f"'{k}'" for k in missing)
    if not (record["prompt_id"] is None or isinstance(record["prompt_id"], (str, int))):
        return "field 'prompt_id' must be a string, an integer or null"
    if not isinstance(record["failed"], bool):
        return "field 'failed' must be true or false"
    steps = record["steps"]
    if not (isinstance(steps, list) and all(isinstance(s, str) for s in steps)):
        return "field 'steps' must be a list of strings"
    for key in ("scores", "mean_advantage"):
        values = record[key]
        if not (isinstance(values, list) and all(v is None or finite_number(v) for v in values)):
            return f"field '{key}' must be a list of numbers or nulls"
        if len(values) != len(steps):
            return f"field '{key}' has {len(values)} entries for {len(steps)} steps"
    critiques = record["critiques"]
    if critiques is not None:
        if not (isinstance(critiques, list) and all(c is None or isinstance(c, str) for c in critiques)):
            return "field 'critiques' must be null or a list of strings or nulls"
        if len(critiques) != len(steps):
            return f"field 'critiques' has {len(critiques)} entries for {len(steps)} steps"
    return None


def finite_number(value) -> bool:
    """A JSON number that is finite as a float (booleans are not numbers here, nor integers past float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def append_trace(path: str | Path, record: dict, max_bytes: int) -> None:
    """Append one record (checked against the format: ``ValueError`` naming the field otherwise), rotating first."""
    problem = trace_problem(record)
    if problem is not None:
        raise ValueError(f"{path}: not a trace record: {problem}")
    try:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in model text: JSON's \u escapes carry it as valid UTF-8
        line = (json.dumps(record) + "\n").encode("ascii")
    path = Path(path)
    if path.exists() and path.stat().st_size + len(line) > max_bytes:
        os.replace(path, path.with_name(path.name + ".1"))
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
