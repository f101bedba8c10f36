"""Step segmentation of policy responses (paper Section 2.4, Steps 2-4; Fig. 14): ``str -> list[Step]``.

CDPA gives every response token t the score of the reasoning step holding it, r_{i,t} = r_i^j. This module finds the
steps of a response as character spans; ``cdra_plugin.cdpa.align`` maps them onto the generated tokens. The gateway
segments the text it scores and the trainer the text it decoded, with this same function, so the two agree on the
number of steps. The host (OpenRLHF) has no notion of steps. Pure text: no numpy, no torch.

Grammar (lines are split at ``"\\n"``; a ``"\\r"`` before it is tolerated)::

    line    := indent markdown* label rest
    indent  := [ \\t]*                         markdown := one of  > # * _ - +  (and blanks between them)
    label   := "Step" [ \\t]* number [ \\t]* ("(" title ")")? close sep
             | ("Final" [ \\t]+ ("Answer" | "Response" | "Recommendation") | "Answer") [ \\t]* close asep
    number  := digits ("." digits)*  |  "N"   (Fig. 14 literally shows "Step N:")
    close   := [*_]*                          (closing emphasis, as in "**Step 1**")
    sep     := one of  : ： . ) - – —  followed by [*_]*,  or end of line,  or a non-empty close
    asep    := one of  : ： - – —  followed by [*_]*,  or end of line,  or a non-empty close

Keywords are case-insensitive; the title is at most 80 characters without parentheses or newlines. So these are
markers: ``Step 1:``, ``step 2 -``, ``Step 3.``, ``Step 4)``, ``**Step 5:**``, ``### Step 6``, ``- **Step 7**: x``,
``> Step 2.1:``, ``Step 3 (Deeper motive):``, ``Final Answer:``, ``**Final answer**``, ``Answer:``.

Rules, and why:

- A marker counts only at the start of a line. "as in Step 2, ..." or "... Step 3: see above" inside a line is
  text of the current step. A response that writes all its steps on one line is therefore one step (the
  ``mean_steps`` diagnostic of ``cdra_plugin.cdpa.advantage`` shows this happening).
- "Step 1 is ..." (no separator after the number) is prose, not a marker; "Answer the..." likewise.
- Every marker line opens a new step whatever its number: restarts ("Step 1" twice), gaps (1, 2, 5) and repeats
  are kept in text order; the numbers are never interpreted. Sub-steps ("Step 2.1:") are steps.
- A final-answer line ("Final Answer:", "**Final answer**", "Answer:") opens its own step: DeepPref trees have an
  answer node scored like a step, so the PRM scores the answer like any other step. "Step 5: Final answer: ..."
  is one step (the answer label is not at the start of the line).
- Empty steps are not steps. A step whose content (from the end of its marker to the next marker, or to the end of
  the response) has no letter or digit in any script (blank, or only punctuation, markdown or emoji) does not
  count: its characters join the step before it, or, when no step comes before it, the step after it (they are
  then part of that step but not of its body: they have no content). Otherwise a policy rewarded per step would
  learn to print bare markers. Emptiness is judged per marker on the original text, so consecutive empty steps all
  go. When no step has content, the last marker opens the response's only step (its body has no content either).
- Markers inside fenced code blocks are not markers (CommonMark's basic rule): a line indented by at most 3
  spaces that starts with 3 or more backticks or tildes opens a fence (a backtick fence's info string may not
  contain a backtick); a line of at least as many of the same character, indented by at most 3 spaces and followed
  only by blanks, closes it; a fence never closed runs to the end of the response.
- End-of-sequence texts at the end (``cdra_plugin.cdpa.prompts.DEFAULT_END_TOKENS``: ``<|im_end|>``, ``</s>``, ...,
  with the whitespace around them) are not content: markers are looked for, and steps judged empty or not, as if
  the text stopped before them; they belong to the last step. So ``segment_steps(text)`` and
  ``segment_steps(text + "<|im_end|>")`` find the same steps: the trainer segments decoded action tokens that end
  with the EOS token, the gateway the response it received with such tokens stripped.
- Text before the first marker (a preamble such as "Sure! Let me think.") joins step 1, so the PRM sees it as part
  of step 1 and its tokens get step 1's score. Then step 1 has ``start == body_start == 0`` (its body is the
  preamble and the whole first marked step, marker line included) and ``marker`` is the marker's text. Text before
  the first marker with no letter or digit is not a preamble (empty steps before step 1 are not either).
- A response without markers is one step (``marker == ""``, ``body_start == 0``); the empty response is
  ``[Step(0, 0, 0, 0, "")]``.
- Steps tile the text: a step starts at the beginning of its marker's line (indentation included) and ends where
  the next one starts, so the line break before a marker line belongs to the previous step.
- ``max_steps`` (the carrier width, see ``cdra_plugin.cdpa.carrier``) merges steps ``max_steps - 1 ...`` into one last
  step; the gateway and the trainer both segment with the same value, so their step counts agree.

A response still being written: ``completed_steps(prefix)`` are the steps of the prefix that every continuation keeps
as they are (same span, marker and body), so the PRM can judge them before the response ends (the streaming
executor, ``cdra_plugin.openrlhf.stream``). Step j is complete once a later step has begun for good: the last step of
the prefix has content that no continuation can take back. Content on its marker's line, or on a finished line, is
fixed; content on an unfinished last line is not (that line may still become a marker and leave the step empty), nor
is the start of an end-of-sequence text (``</s`` may become ``</s>``). The steps before the last are then complete,
except under ``max_steps`` the ones that merge into the last.

Scanning is one regular-expression pass over the line starts (a match at 0, then a search for "\\n" + a marker or
fence line) with bounded quantifiers and disjoint character classes (no nested repetition), then one search for a
letter or digit per marker; time is linear in the text length and any Unicode is fine.

    >>> text = "Sure.\\nStep 1: likes quiet.\\n**Step 2:** suggest a library."
    >>> [(s.start, s.end, s.marker) for s in segment_steps(text)]
    [(0, 27, 'Step 1:'), (27, 57, '**Step 2:**')]
"""

import re
from typing import NamedTuple

from cdra_plugin.cdpa.prompts import DEFAULT_END_TOKENS

_EOL = r"(?=[ \t]*(?:\r?\n|\Z))"
_MARKER_LINE = (
    r"[ \t>#*_+\-]*"  # indentation, quote, heading, emphasis, bullet
    r"(?:"
    # "(?![\w.]*\w)" rejects "Step 12abc" and "Step 1.2.x" without backtracking into the number
    r"step[ \t]*(?:\d{1,9}(?:\.\d{1,9}){0,4}|n)(?![\w.]*\w)[ \t]*(?:\([^()\n]{0,80}\)[ \t]*)?"
    r"(?P<sclose>[*_]+)?[ \t]*"
    rf"(?:[:\uff1a.)\-\u2013\u2014][*_]*|{_EOL}|(?(sclose)|(?!)))"
    r"|"
    r"(?:final[ \t]+(?:answer|response|recommendation)|answer)\b[ \t]*"
    r"(?P<aclose>[*_]+)?[ \t]*"
    rf"(?:[:\uff1a\-\u2013\u2014][*_]*|{_EOL}|(?(aclose)|(?!)))"
    r")"
)
# A fence line (``fence``, then the rest of its line as ``info``; "." stops at "\n") or a marker line. Fence lines
# start with ` or ~ after at most 3 spaces, which no marker line does, so the two never compete for a line.
_LINE = rf" {{0,3}}(?P<fence>`{{3,}}|~{{3,}})(?P<info>.*)|{_MARKER_LINE}"
# A line on the first line (``.match`` at 0), and one on any later line with the "\n" before it: a pattern that
# starts with a literal lets the regex engine skip straight to the next "\n", where a ``^`` under MULTILINE is
# tried at every character (2-3x slower). Nothing after the "\n" can cross a line, so matches never overlap.
_FIRST_LINE = re.compile(_LINE, re.IGNORECASE)
_LATER_LINE = re.compile("\n(?:" + _LINE + ")", re.IGNORECASE)
_CONTENT = re.compile(r"[^\W_]")  # a letter or digit, in any script
# Matched at 0 of a reversed tail of the text: a trailing run of whitespace and end-of-sequence texts (no
# backtracking: nothing follows the loop). Whitespace is tried first, then the tokens in order, as in
# ``cdra_plugin.cdpa.prompts.strip_end_tokens``.
_END_RUN = re.compile("(?:\\s|" + "|".join(re.escape(t[::-1]) for t in DEFAULT_END_TOKENS if t) + ")*")
_TAIL = 64  # characters reversed at a time: reversing a whole response costs more than segmenting it


class Step(NamedTuple):
    """One step of a response: characters ``[start, end)`` of the text, its content from ``body_start``."""

    index: int  # 0-based
    start: int  # inclusive char offset
    end: int  # exclusive char offset
    body_start: int  # where the content begins after the marker (== start when there is no marker)
    marker: str  # the marker text matched, e.g. "**Step 2:**" ("" when none)

    def body(self, text: str) -> str:
        """The step's content without its marker, stripped."""
        return text[self.body_start : self.end].strip()


def segment_steps(text: str, max_steps: int | None = None) -> list[Step]:
    """Split ``text`` into steps that tile it (grammar and rules in the module docstring).

    ``max_steps``: at most this many steps; the ones from index ``max_steps - 1`` on are merged into the last.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (or None), got {max_steps}")
    end = _content_end(text)
    found = _markers(text, end)
    stops = [line for line, _, _ in found[1:]] + [end]  # where each marker's content ends
    # a marker opens a step only when its content has a letter or digit
    kept = [m for m, stop in zip(found, stops, strict=False) if _CONTENT.search(text, m[1], stop)][:max_steps]
    if not found:
        return [Step(0, 0, len(text), 0, "")]
    if not kept:  # no step has content: the last marker opens the only one
        kept = [found[-1]]
    if _CONTENT.search(text, 0, found[0][0]):  # a preamble joins step 1's body, so the PRM sees it
        kept[0] = (0, 0, kept[0][2])
    starts = [0] + [line for line, _, _ in kept[1:]]
    ends = starts[1:] + [len(text)]
    return list(map(Step._make, [(k, starts[k], ends[k], body, marker) for k, (_, body, marker) in enumerate(kept)]))


def completed_steps(text: str, max_steps: int | None = None) -> list[Step]:
    """The steps of ``text``, a prefix of a response, that ``segment_steps`` finds alike in every continuation of it.

    Rules in the module docstring; ``tests/test_steps.py`` checks them against the full responses of generated
    prefixes (markers of every shape, end tokens, CRLF, empty steps, fences).
    """
    steps = segment_steps(text, max_steps)
    if len(steps) < 2:
        return []
    last = steps[-1]
    line = text.rfind("\n") + 1  # the last line, unfinished until a "\n" ends it
    stop = min(_stable_end(text), len(text) if line <= last.start else line)
    return steps[:-1] if _CONTENT.search(text, last.body_start, stop) else steps[:-2]


def _stable_end(text: str) -> int:
    """Where ``_content_end`` puts the end of ``text`` in any continuation, at the latest: a trailing start of an
    end-of-sequence text (``"</s"``, ``"<|im"``) is left out, since it may complete into one."""
    partial = max((n for t in DEFAULT_END_TOKENS for n in range(1, len(t)) if text.endswith(t[:n])), default=0)
    return _content_end(text[: len(text) - partial])


def _content_end(text: str) -> int:
    """Where the text ends without its trailing whitespace and end-of-sequence texts (``DEFAULT_END_TOKENS``)."""
    end = len(text)
    while end:  # a window at a time; each pass removes at least one character or stops, so time stays linear
        run = _END_RUN.match(text[max(0, end - _TAIL) : end][::-1]).end()
        if not run:
            return end
        end -= run
    return end


def _markers(text: str, end: int) -> list[tuple[int, int, str]]:
    """``(line start, body start, marker)`` of every marker line in ``text[:end]`` outside fenced code blocks."""
    found, fence = [], None  # fence: the opening fence of the code block the scan is in
    first = _FIRST_LINE.match(text, 0, end)
    if first is not None:
        if first["fence"]:
            fence = _fence_after(first, None)
        else:
            found.append((0, first.end(), first.group().strip()))
    for match in _LATER_LINE.finditer(text, 0, end):  # a match begins at the "\n" before its line
        if match["fence"]:
            fence = _fence_after(match, fence)
        elif fence is None:
            found.append((match.start() + 1, match.end(), match.group().strip()))
    return found


def _fence_after(match: re.Match, fence: str | None) -> str | None:
    """The open fence after the fence line ``match``: the line opens a block, closes ``fence``, or is inside it."""
    line_fence, info = match["fence"], match["info"]
    if fence is None:  # a backtick fence's info string has no backtick
        return line_fence if line_fence[0] == "~" or "`" not in info else None
    closes = line_fence[0] == fence[0] and len(line_fence) >= len(fence) and not info.strip(" \t\r")
    return None if closes else fence
