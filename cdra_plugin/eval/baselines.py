"""What the model under evaluation is asked: the Fig. 14 prompt, or one of the in-context baselines of Appendix C.

- ``policy``: ``cdra_plugin.cdpa.prompts.policy_prompt``, the very text CDPA trained on (RFT targets and RL prompts).
- ``zero-shot`` (Brown et al., 2020), ``few-shot`` (Zhao et al., 2025), ``cot`` (Wei et al., 2022): Appendix C
  describes these baselines but the paper prints none of their prompts; the three templates below are this
  project's own, written from those descriptions (the user's profile and query without examples; a few
  demonstrations of personalised answers; an explicit reasoning step about the preferences before the answer).

Few-shot demonstrations come from a JSONL file (``--shots``): rows with ``preference`` and ``question`` (or a
``label`` holding them, as in ``cdra data prepare`` outputs) and the demonstrated answer in ``response``,
``reference`` (DeepPref ``eval.jsonl``) or ``output``. A demonstration whose (preference, question) is in the
evaluated set is refused, so no answer to a test question leaks into the prompt; ``k`` of the rest are drawn with
the seed and the same ``k`` are shown with every question.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from cdra_plugin.cdpa.prompts import fill, policy_prompt
from cdra_plugin.io.jsonl import read_rows

MODES = ("policy", "zero-shot", "few-shot", "cot")

ZERO_SHOT_TEMPLATE = """\
You are a helpful assistant. A user has told you about a preference of theirs and asks a question. Answer the \
question.

User preference: {preference}
Question: {question}"""

COT_TEMPLATE = """\
You are a helpful assistant. A user has told you about a preference of theirs and asks a question. First think step \
by step about what the preference tells you about the user and what it implies for the question, then give your \
answer on a line starting with "Final answer:".

User preference: {preference}
Question: {question}"""

FEW_SHOT_TEMPLATE = """\
You are a helpful assistant. A user has told you about a preference of theirs and asks a question. Answer the \
question. Here are examples of answers that take the user's preference into account:

{examples}

Now answer this one.

User preference: {preference}
Question: {question}"""

EXAMPLE_TEMPLATE = """\
Example {index}
User preference: {preference}
Question: {question}
Answer: {response}"""

_RESPONSE_KEYS = ("response", "reference", "output")


@dataclass(frozen=True)
class Shot:
    preference: str
    question: str
    response: str


def pair_key(preference: str, question: str) -> tuple[str, str]:
    """(P, q) compared without case and whitespace differences."""
    return " ".join(preference.split()).casefold(), " ".join(question.split()).casefold()


def row_fields(row: dict, where: str) -> dict:
    """The object holding a data row's ``preference`` and ``question``: the row itself, or its ``label`` (an object
    or its JSON text, as ``cdra data prepare`` writes it); ``ValueError`` naming ``where`` when neither has them."""
    source = row
    if not all(isinstance(row.get(key), str) for key in ("preference", "question")) and "label" in row:
        source = row["label"]
        if isinstance(source, str):
            try:
                source = json.loads(source)
            except json.JSONDecodeError:
                raise ValueError(f"{where}: 'label' is not valid JSON") from None
        if not isinstance(source, dict):
            raise ValueError(f"{where}: 'label' must be a JSON object with 'preference' and 'question'")
    for key in ("preference", "question"):
        if not isinstance(source.get(key), str) or not source[key].strip():
            raise ValueError(f"{where}: no '{key}' string (as a key of the row or of its 'label')")
    return source


def _response(row: dict, where: str) -> str:
    for key in _RESPONSE_KEYS:
        value = row.get(key)
        if isinstance(value, list) and value and isinstance(value[-1], dict):  # chat messages: the last one
            value = value[-1].get("content")
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise ValueError(f"{where}: no demonstrated answer; expected a non-empty {' / '.join(_RESPONSE_KEYS)}")


def load_shots(path: Path, k: int, evaluated: set[tuple[str, str]], seed: int = 0) -> tuple[list[Shot], int]:
    """``k`` demonstrations drawn with ``seed`` from ``path`` and the number refused for being in ``evaluated``."""
    if k < 1:
        raise ValueError(f"--k must be >= 1 for few-shot, got {k}")
    eligible, seen, refused = [], set(), 0
    for n, row in read_rows(path, "--shots"):
        where = f"{path}:{n}"
        fields = row_fields(row, where)
        key = pair_key(fields["preference"], fields["question"])
        if key in evaluated:
            refused += 1
        elif key not in seen:
            seen.add(key)
            eligible.append(Shot(fields["preference"], fields["question"], _response(row, where)))
    if len(eligible) < k:
        raise ValueError(
            f"--shots {path}: {len(eligible)} usable demonstration(s) for --k {k} ({refused} refused "
            "because their (preference, question) is in the evaluated set)"
        )
    return random.Random(seed).sample(eligible, k), refused


def build_prompt(mode: str, preference: str, question: str, shots: list[Shot] | tuple = ()) -> str:
    """The prompt ``mode`` sends for (P, q)."""
    if mode == "policy":
        return policy_prompt(preference, question)
    if mode == "zero-shot":
        return fill(ZERO_SHOT_TEMPLATE, preference=preference, question=question)
    if mode == "cot":
        return fill(COT_TEMPLATE, preference=preference, question=question)
    if mode == "few-shot":
        if not shots:
            raise ValueError("few-shot needs demonstrations: --shots FILE --k K")
        examples = "\n\n".join(
            fill(EXAMPLE_TEMPLATE, index=str(i), preference=s.preference, question=s.question, response=s.response)
            for i, s in enumerate(shots, start=1)
        )
        return fill(FEW_SHOT_TEMPLATE, examples=examples, preference=preference, question=question)
    raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
