"""Reading a judge's answer: the verdict ``<answer>Yes|No</answer>``, its explanation and the acknowledgement's quote.

The verdict is the content of the last ``<answer>...</answer>`` element (the prompts ask for it last; an earlier one
may be the judge echoing the format). Case, surrounding whitespace, one pair of square brackets (the prompts show
``[Yes/No]``) and a final full stop are tolerated; anything else, "Yes" without tags included, is no verdict:
``parse_answer`` returns ``verdict=None`` and ``answer_problem`` says why, so the caller retries and finally records
``null``. A verdict is never inferred from free text.

``acknowledge`` answers also carry ``<preference>quote</preference>``: the sentence that states the preference,
which becomes ``{assistant_restatement}`` of the ``hallucination`` check (PrefEval's protocol). A Yes without that
element is incomplete and retried like a missing verdict.

    >>> parse_answer("<explanation>Fine.</explanation>\\n<answer> yes </answer>").verdict
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ELEMENT = {
    name: re.compile(rf"<\s*{name}\s*>(.*?)<\s*/\s*{name}\s*>", re.IGNORECASE | re.DOTALL)
    for name in ("answer", "explanation", "preference")
}
_VERDICT = re.compile(r"\[?\s*(yes|no)\s*\]?\s*\.?", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    verdict: bool | None  # None: no parsable <answer>
    explanation: str  # <explanation> content, else the whole answer (stripped)
    restatement: str | None  # <preference> content (acknowledge); None when absent


def _last(name: str, text: str) -> str | None:
    found = _ELEMENT[name].findall(text)
    return found[-1].strip() if found else None


def parse_answer(text: str) -> Answer:
    """The judge's verdict, explanation and quote in ``text``; see the module docstring for what counts."""
    text = text or ""
    answer = _last("answer", text)
    match = _VERDICT.fullmatch(answer) if answer is not None else None
    verdict = None if match is None else match.group(1).lower() == "yes"
    explanation = _last("explanation", text)
    quote = _last("preference", text)
    if quote is not None and len(quote) >= 2 and quote[0] == "[" and quote[-1] == "]":
        quote = quote[1:-1].strip()  # the placeholder's brackets copied around the quote
    return Answer(verdict, explanation if explanation is not None else text.strip(), quote)


def answer_problem(check: str, text: str) -> str | None:
    """Why ``text`` is not a usable answer to ``check`` (None when it is): the ``check`` of ``LLMClient.sample``."""
    answer = parse_answer(text)
    if answer.verdict is None:
        return f"{check}: no <answer>Yes</answer> or <answer>No</answer> in the judge's answer"
    if check == "acknowledge" and answer.verdict and answer.restatement is None:
        return "acknowledge: Yes without the <preference>...</preference> quote the hallucination check needs"
    return None
