"""A scripted Pers-GenPRM that answers from a table of step texts: the stand-in ``cdra demo`` scores with.

A trained Pers-GenPRM is out of reach on a laptop, so the demo writes the critiques and scores a good PRM would give
its example steps into a table, ``{step text: [score, critique]}``, and this script answers each Fig. 15 prompt
with the row of the step under judgement (the text after the last "New Thought to Evaluate:", its quoting and
"Step j:" marker removed). A step the table lacks gets ``default`` with a critique that says so. The gateway, its
prompts, parsing and failure handling are the real ones.

    python -m cdra_plugin.stub serve pers-genprm --role table --table scores.json --port 8000
"""

import json
import re
from collections.abc import Callable
from pathlib import Path

from cdra_plugin.stub.server import ScriptedRequest, score_text

_MARKER = re.compile(r"^\s*Step\s+\d+\s*:\s*", re.IGNORECASE)


def judged_step(prompt: str) -> str:
    """The text of the step a Fig. 15 prompt asks about, without its ``> `` quoting and ``Step j:`` marker."""
    section = prompt.rpartition("New Thought to Evaluate:")[2].strip("\n")
    lines = [line[2:] if line.startswith("> ") else line.removeprefix(">") for line in section.splitlines()]
    return _MARKER.sub("", "\n".join(lines)).strip()


def table_judge(table: dict[str, list], default: float = 0.0) -> Callable[[ScriptedRequest], str]:
    """A script answering ``score_text(score, critique)`` from ``table[step text] = [score, critique]``."""

    def judge(request: ScriptedRequest) -> str:
        step = judged_step(request.prompt)
        if step in table:
            score, critique = table[step]
            return score_text(score, critique)
        return score_text(default, "This step is not in the demo's score table.")

    return judge


def load_table(path: str | Path) -> dict[str, list]:
    """The table written by ``cdra demo``: a JSON object of step text -> [score, critique]."""
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(table, dict) or not all(isinstance(v, list) and len(v) == 2 for v in table.values()):
        raise ValueError(f"{path}: expected a JSON object of step text -> [score, critique]")
    return table
