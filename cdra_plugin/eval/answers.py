"""Reading a judge's answer: the verdict ``<answer>Yes|No</answer>``, its explanation and the acknowledgement's quote.

The verdict is the content of the ``<answer>...</answer>`` elements that hold one (an element such as
``<answer>[Yes/No]</answer>`` is the judge echoing the format). Case, surrounding whitespace, one pair of square
brackets (the prompts show ``[Yes/No]``) and a final full stop are tolerated; anything else, "Yes" without tags
included, is no verdict, and so are two elements that disagree (which one the judge meant is a guess):
``parse_answer`` returns ``verdict=None`` and ``answer_problem`` says why, so the caller retries and finally records
``null``. A verdict is never inferred from free text.

The judged text is model output, so it may hold an answer block of its own ("... <answer>No</answer>"): the judge
could quote it after its verdict. ``defuse`` is applied to every field the plugin inserts into a judge prompt: it
neutralises chat-template role tokens (as the PRM gateway does: ``cdra_plugin.cdpa.prompts.neutralize``) and
breaks this module's tags with a blank after ``<`` (``< answer>``), which the parser never reads as an element. A
quote of the response is then text, never a verdict; a quote with its tags repaired would disagree with the
judge's own verdict or repeat it, so it cannot flip it either.

``acknowledge`` answers also carry ``<preference>quote</preference>``: the sentence that states the preference,
which becomes ``{assistant_restatement}`` of the ``hallucination`` check (PrefEval's protocol). A Yes without that
element is incomplete and retried like a missing verdict.

    >>> parse_answer("<explanation>Fine.</explanation>\\n<answer> yes </answer>").verdict
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdra_plugin.cdpa.prompts import neutralize

_TAGS = ("answer", "explanation", "preference")
_ELEMENT = {name: re.compile(rf"<{name}\s*>(.*?)</{name}\s*>", re.IGNORECASE | re.DOTALL) for name in _TAGS}
_TAG_START = re.compile(rf"<(?=/?(?:{'|'.join(_TAGS)})\b)", re.IGNORECASE)  # what ``defuse`` breaks
_VERDICT = re.compile(r"\[?\s*(yes|no)\s*\]?\s*\.?", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    verdict: bool | None  # None: no parsable <answer>
    explanation: str  # <explanation> content, else the whole answer (stripped)
    restatement: str | None  # <preference> content (acknowledge); None when absent


def defuse(text: str) -> str:
    """``text`` as a judge prompt may quote it: role tokens neutralised, ``<answer>``-style tags broken."""
    return _TAG_START.sub("< ", neutralize(text))


def _last(name: str, text: str) -> str | None:
    found = _ELEMENT[name].findall(text)
    return found[-1].strip() if found else None


def _verdict(text: str) -> bool | None:
    matches = (_VERDICT.fullmatch(answer.strip()) for answer in _ELEMENT["answer"].findall(text))
    verdicts = {match.group(1).lower() == "yes" for match in matches if match is not None}
    return verdicts.pop() if len(verdicts) == 1 else None


def parse_answer(text: str) -> Answer:
    """The judge's verdict, explanation and quote in ``text``; see the module docstring for what counts."""
    text = text or ""
    verdict = _verdict(text)
    explanation = _last("explanation", text)
    quote = _last("preference", text)
    if quote is not None and len(quote) >= 2 and quote[0] == "[" and quote[-1] == "]":
        quote = quote[1:-1].strip()  # the placeholder's brackets copied around the quote
    return Answer(verdict, explanation if explanation is not None else text.strip(), quote)


def answer_problem(check: str, text: str) -> str | None:
    """Why ``text`` is not a usable answer to ``check`` (None when it is): the ``check`` of ``LLMClient.sample``."""
    answer = parse_answer(text)
    if answer.verdict is None:
        return f"{check}: no <answer>Yes</answer> or <answer>No</answer> in the judge's answer, or both"
    if check == "acknowledge" and answer.verdict and answer.restatement is None:
        return "acknowledge: Yes without the <preference>...</preference> quote the hallucination check needs"
    return None
