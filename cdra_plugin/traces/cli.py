"""``cdra traces show``: one traced or PRM-scored response on the terminal, its steps coloured by score.

    cdra traces show traces.jsonl                  # the last record of a cdra-train trace (--cdpa.trace_path)
    cdra traces show scored.jsonl --index 0        # the first record written by `cdra prm score`
    cdra traces show examples/traces/cdpa_sample.jsonl --index 2 --no-colour

Reads the trace format of ``cdra_plugin.traces`` and the records of ``cdra prm score`` (``id``, ``preference``,
``question``, ``steps`` with ``text``/``score``/``critiques``; they have no advantages, the PRM scored them outside
training). Lines that are neither (not JSON, missing fields, wrong types) are skipped and reported on stderr with
their line numbers; ``--index`` counts the records that remain. Model text is printed without control characters
or terminal escape sequences (a response cannot recolour, move the cursor in or retitle the terminal), and each
of its lines is indented under its step's header, so text cannot pass for a header.
"""

import json
import math
import os
import re
import sys
from dataclasses import dataclass

from cdra_plugin.traces import finite_number, trace_problem

SCORE_COLOURS = ((0.7, "\033[32m"), (0.4, "\033[36m"), (0.0, "\033[33m"), (-math.inf, "\033[31m"))
FAILED_COLOUR = "\033[31m"
RESET = "\033[0m"
MAX_REPORTED = 5  # bad lines named one by one on stderr; the rest are counted

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), other two-character escapes; then single control characters
# (C0 but tab and newline, DEL, C1) and the bidirectional overrides that reorder what a terminal shows.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """Model text safe for a terminal: escape sequences and control characters removed (newlines and tabs kept)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


@dataclass
class _Step:
    text: str
    score: float | None
    advantage: float | None
    critiques: list[str]


@dataclass
class _View:
    title: str
    failed: str | None  # why the response took no part, or None
    steps: list[_Step]
    context: tuple[tuple[str, str], ...] = ()  # (label, text) lines shown under the title


def _from_trace(record: dict) -> _View:
    critiques = record["critiques"] or [None] * len(record["steps"])
    steps = [
        _Step(text, score, adv, [c] if c else [])
        for text, score, adv, c in zip(
            record["steps"], record["scores"], record["mean_advantage"], critiques, strict=True
        )
    ]
    failed = "FAILED: excluded from the update" if record["failed"] else None
    return _View(f"prompt {record['prompt_id']}", failed, steps)


def _is_scored(record) -> bool:
    """Looks like ``cdra prm score`` output: ``steps`` but no ``prompt_id`` (which every trace record has)."""
    return isinstance(record, dict) and "steps" in record and "prompt_id" not in record


def _scored_problem(record: dict) -> str | None:
    """Why a ``cdra prm score``-like record cannot be shown; None when it can."""
    if not isinstance(record["steps"], list):
        return "field 'steps' must be a list"
    for j, step in enumerate(record["steps"]):
        if not isinstance(step, dict) or not isinstance(step.get("text"), str):
            return f"steps[{j}].text must be a string"
        if not (step.get("score") is None or finite_number(step["score"])):
            return f"steps[{j}].score must be a number or null"
        critiques = step.get("critiques", [])
        if not (isinstance(critiques, list) and all(isinstance(c, str) for c in critiques)):
            return f"steps[{j}].critiques must be a list of strings"
    return None


def _from_scored(record: dict) -> _View:
    steps = [_Step(s["text"], s.get("score"), None, s.get("critiques", [])) for s in record["steps"]]
    outcome = record.get("outcome")
    failed = f"PRM outcome: {outcome}" if outcome in ("dropped", "failed") else None
    title = f"{record.get('id', '?')}  (scored by `cdra prm score`: no advantages outside training)"
    context = tuple(
        (f"{key}: ", record[key]) for key in ("preference", "question") if isinstance(record.get(key), str)
    )
    return _View(title, failed, steps, context)


def load(path: str) -> tuple[list[_View], list[str]]:
    """The displayable records of ``path`` and one line per skipped one (``path:LINE: reason``)."""
    views, problems = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as e:  # JSONDecodeError, numbers too long, nesting too deep
                problems.append(f"{path}:{n}: not valid JSON ({type(e).__name__}: {str(e)[:80]})")
                continue
            scored = _is_scored(record)
            problem = _scored_problem(record) if scored else trace_problem(record)
            if problem is not None:
                problems.append(f"{path}:{n}: {problem}")
            else:
                views.append(_from_scored(record) if scored else _from_trace(record))
    return views, problems


def render(view: _View, colour: bool) -> str:
    lines = [_indent(view.title, "") + (f"  [{view.failed}]" if view.failed else "")]
    lines += [_indent(text, label) for label, text in view.context]
    for j, step in enumerate(view.steps):
        if step.score is None:
            tint, score = FAILED_COLOUR, "n/a"
        else:
            tint, score = next(c for bound, c in SCORE_COLOURS if step.score >= bound), f"{step.score:+.2f}"
        advantage = "" if step.advantage is None else f"  advantage {step.advantage:+.3f}"
        header = f"Step {j + 1}  score {score}{advantage}"
        lines.append(f"{tint}{header}{RESET}" if colour else header)
        lines.append(_indent(step.text, "  "))
        for critique in step.critiques:
            lines.append(_indent(critique, "  critique: ", "            "))
    return "\n".join(lines)


def _indent(text: str, first: str, rest: str = "  ") -> str:
    head, *tail = clean(text).splitlines() or [""]
    return "\n".join([first + head] + [rest + line for line in tail])


def add_parser(subparsers) -> None:
    traces = subparsers.add_parser(
        "traces",
        help="read critique traces (cdra-train --cdpa.trace_path) and `cdra prm score` output",
        description="Read what the PRM said about each step: the critique traces cdra-train writes "
        "(--cdpa.trace_path: each step's score, critique and mean CDPA advantage) and `cdra prm score` records.",
    )
    commands = traces.add_subparsers(dest="traces_command", metavar="COMMAND", required=True)
    show = commands.add_parser(
        "show",
        help="print one record, its steps coloured by PRM score",
        description="Print one record of a critique trace (cdra-train --cdpa.trace_path) or of `cdra prm score` "
        "output: each step with its score, mean CDPA advantage (traces only) and critiques. Bad lines are "
        "skipped and reported on stderr.",
    )
    show.add_argument("file", help="a JSONL trace file, or the output of `cdra prm score`")
    show.add_argument("--index", type=int, default=-1, help="which record (0 = first, -1 = last; default -1)")
    show.add_argument("--no-colour", action="store_true", help="plain text even on a terminal (also: NO_COLOR=1)")
    show.set_defaults(func=run_show)


def run_show(args) -> int:
    views, problems = load(args.file)  # an unreadable file: an OSError naming it, which the runner reports
    for problem in problems[:MAX_REPORTED]:
        print(f"cdra traces show: skipped {problem}", file=sys.stderr)
    if len(problems) > MAX_REPORTED:
        print(f"cdra traces show: skipped {len(problems) - MAX_REPORTED} more bad lines", file=sys.stderr)
    if not views:
        raise ValueError(f"{args.file}: no trace or scored records to show")
    if not -len(views) <= args.index < len(views):
        raise ValueError(f"--index {args.index} is out of range: {args.file} has {len(views)} records "
                         f"(0..{len(views) - 1}, or -1 for the last)")  # fmt: skip
    colour = not args.no_colour and not os.environ.get("NO_COLOR") and sys.stdout.isatty()
    print(render(views[args.index], colour))
    return 0
