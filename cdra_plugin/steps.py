"""Step segmentation of policy responses and its alignment with tokens (paper Section 2.4, Steps 2-4; Fig. 14).

CDPA gives every response token t the score of the reasoning step holding it, r_{i,t} = r_i^j. This module finds
the steps of a response as character spans (``segment_steps``) and maps them onto tokens through the tokenizer's
offset mapping (``token_step_ids``), never by re-tokenising step texts and searching for their token ids: a step
tokenised alone need not be a token subsequence of the response (the response's last token of a step is often
".\n\n", the stripped step's is "."; sampled ids need not be the canonical encoding), and such steps are silently
lost (``scripts/bench_advantage.py`` counts them). The host (OpenRLHF) has no notion of steps.

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
  ``mean_steps`` diagnostic of ``cdra_plugin.advantage`` shows this happening).
- "Step 1 is ..." (no separator after the number) is prose, not a marker; "Answer the..." likewise.
- Every marker line opens a new step whatever its number: restarts ("Step 1" twice), gaps (1, 2, 5) and repeats
  are kept in text order; the numbers are never interpreted. Sub-steps ("Step 2.1:") are steps.
- A final-answer line ("Final Answer:", "**Final answer**", "Answer:") opens its own step: DeepPref trees have an
  answer node scored like a step, so the PRM scores the answer like any other step. "Step 5: Final answer: ..."
  is one step (the answer label is not at the start of the line).
- Text before the first marker (a preamble such as "Sure! Let me think.") joins step 1, so the PRM sees it as part
  of step 1 and its tokens get step 1's score. Then step 1 has ``start == body_start == 0`` (its body is the
  preamble and the whole first marked step, marker line included) and ``marker`` is the first marker's text.
  Blank-only text before the first marker is not a preamble.
- A response without markers is one step (``marker == ""``, ``body_start == 0``); the empty response is
  ``[Step(0, 0, 0, 0, "")]``.
- Steps tile the text: a step starts at the beginning of its marker's line (indentation included) and ends where
  the next one starts, so the line break before a marker line belongs to the previous step.
- ``max_steps`` (the carrier width, see ``cdra_plugin.carrier``) merges steps ``max_steps - 1 ...`` into one last
  step; the gateway and the trainer both segment with the same value, so their step counts agree.

Scanning is one regular-expression pass over the line starts (a match at 0, then a search for "\\n" + marker) with
bounded quantifiers and disjoint character classes (no nested repetition), so time is linear in the text length and
any Unicode is fine. ``cdra_plugin.align`` runs segmentation and token alignment for a whole batch of generated ids.

    >>> text = "Sure.\\nStep 1: likes quiet.\\n**Step 2:** suggest a library."
    >>> [(s.start, s.end, s.marker) for s in segment_steps(text)]
    [(0, 27, 'Step 1:'), (27, 57, '**Step 2:**')]
"""

import itertools
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

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
# A marker on the first line (``.match`` at 0), and one on any later line with the "\n" before it: a pattern that
# starts with a literal lets the regex engine skip straight to the next "\n", where a ``^`` under MULTILINE is
# tried at every character (2-3x slower). Nothing after the "\n" can cross a line, so matches never overlap.
_FIRST_LINE = re.compile(_MARKER_LINE, re.IGNORECASE)
_LATER_LINE = re.compile("\n" + _MARKER_LINE, re.IGNORECASE)


class Step(NamedTuple):
    """One step of a response: characters ``[start, end)`` of the text, its content from ``body_start``.

    A named tuple (immutable, compared by value) rather than a frozen dataclass: it is built ~2.5x faster, which
    counts when every response of every batch is segmented.
    """

    index: int  # 0-based
    start: int  # inclusive char offset
    end: int  # exclusive char offset
    body_start: int  # where the content begins after the marker (== start when there is no marker)
    marker: str  # the marker text matched, e.g. "**Step 2:**" ("" when none)

    def body(self, text: str) -> str:
        """The step's content without its marker, stripped."""
        return text[self.body_start : self.end].strip()


# ``Step(...)`` goes through the named tuple's Python-level ``__new__``; segmentation builds a step per marker of
# every response of every batch, so it builds them directly (same object, ~2x faster)
_new_step = tuple.__new__


def segment_steps(text: str, max_steps: int | None = None) -> list[Step]:
    """Split ``text`` into steps that tile it (grammar in the module docstring).

    ``max_steps``: at most this many steps; the ones from index ``max_steps - 1`` on are merged into the last.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (or None), got {max_steps}")
    first = _FIRST_LINE.match(text)
    later = _LATER_LINE.finditer(text)
    if max_steps is not None:  # later markers would be merged into the last step anyway: stop scanning
        later = itertools.islice(later, max_steps - (first is not None))
    # (line start, body start, marker) of every marker; a later line's match begins at the "\n" before it
    found = [(m.start() + 1, m.end(), m.group().strip()) for m in later]
    if first is not None:
        found.insert(0, (0, first.end(), first.group().strip()))
    if not found:
        return [Step(0, 0, len(text), 0, "")]
    start, body, marker = found[0]
    if start and text[:start].strip():
        body = 0  # a preamble joins step 1: body_start 0 so the PRM sees it
    steps, end = [], len(text)
    for k in range(len(found) - 1, 0, -1):  # backwards: each step ends where the next starts
        start, body_k, marker_k = found[k]
        steps.append(_new_step(Step, (k, start, end, body_k, marker_k)))
        end = start
    steps.append(_new_step(Step, (0, 0, end, body, marker)))
    steps.reverse()
    return steps


def _as_offsets(offsets) -> np.ndarray:
    if isinstance(offsets, torch.Tensor):
        off = offsets.detach().to("cpu", torch.long).numpy()
    elif isinstance(offsets, np.ndarray):
        off = offsets.astype(np.int64, copy=False)
    else:  # a list of (start, end) pairs, as tokenizers return it: fromiter is ~2x faster than np.array here
        if len(offsets) and len(offsets[0]) != 2:
            raise ValueError(f"offsets must be (start, end) pairs, got {offsets[0]!r} first")
        off = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets))
        off = off.reshape(-1, 2)
    if off.size == 0:
        return off.reshape(0, 2)
    if off.ndim != 2 or off.shape[1] != 2:
        raise ValueError(f"offsets must have shape (T, 2) (one (start, end) pair per token), got {off.shape}")
    return off


def token_step_ids(offsets, steps: Sequence[Step]) -> torch.LongTensor:
    """Step index of every token, from the tokenizer's offset mapping over the same text ``steps`` came from.

    offsets: (T, 2) tensor/array or sequence of ``(start, end)`` char offsets. Returns (T,) long on the CPU.
    A token straddling a step boundary belongs to the step holding its first character; a zero-width token
    (``start == end``: special tokens such as ``<|im_end|>``) belongs to the previous token's step (step 0 if first).
    Per-response work is small, so this runs in NumPy (no per-op torch dispatch overhead).
    """
    if not steps:
        raise ValueError("steps is empty: segment_steps always returns at least one step")
    off = _as_offsets(offsets)
    starts = np.fromiter((s.start for s in steps), dtype=np.int64, count=len(steps))
    first = off[:, 0]
    if len(first) > 1 and not (first[1:] >= first[:-1]).all():
        return _unsorted_step_ids(off, starts)
    # Token starts are non-decreasing (any tokenizer's offsets over one text, ``decode_with_offsets``): binary search
    # the first token of each step (S - 1 searches instead of T). Zero-width tokens at such a boundary belong to the
    # previous real token, which starts before the boundary, so the boundary moves past them.
    edges = [0, *np.searchsorted(first, starts[1:], side="left").tolist(), len(first)]
    for k in range(1, len(steps)):
        while edges[k] < len(first) and off[edges[k], 1] <= first[edges[k]]:
            edges[k] += 1
    ids = np.empty(len(first), dtype=np.int64)
    for k in range(len(steps)):
        ids[edges[k] : edges[k + 1]] = k
    return torch.from_numpy(ids)


def _unsorted_step_ids(off: np.ndarray, starts: np.ndarray) -> torch.LongTensor:
    """``token_step_ids`` for offsets whose starts go back somewhere (e.g. ``(0, 0)`` for an appended EOS)."""
    ids = np.maximum(np.searchsorted(starts, off[:, 0], side="right") - 1, 0)
    real = off[:, 1] > off[:, 0]
    if not real.all():  # forward-fill zero-width tokens with the step of the nearest real token before them
        last_real = np.maximum.accumulate(np.where(real, np.arange(len(off)), -1))
        ids = np.where(last_real >= 0, ids[np.maximum(last_real, 0)], 0)
    return torch.from_numpy(ids.astype(np.int64, copy=False))


def step_token_spans(step_ids: torch.Tensor, num_steps: int) -> list[tuple[int, int]]:
    """Half-open token span ``(first, last + 1)`` of each step; ``(k, k)`` (empty, at its place) when a step owns
    no token. ``step_ids``: (T,) non-decreasing step indices in ``[0, num_steps)`` (what ``token_step_ids`` gives).
    """
    ids = torch.as_tensor(step_ids).reshape(-1).to("cpu", torch.long)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if ids.numel():
        if int(ids.min()) < 0 or int(ids.max()) >= num_steps:
            raise ValueError(f"step ids must lie in [0, {num_steps}), got range [{int(ids.min())}, {int(ids.max())}]")
        if bool((ids[1:] < ids[:-1]).any()):
            raise ValueError("step ids must be non-decreasing along the tokens (steps tile the text in order)")
    bounds = torch.zeros(num_steps + 1, dtype=torch.long)
    bounds[1:] = torch.cumsum(torch.bincount(ids, minlength=num_steps), dim=0)
    b = bounds.tolist()
    return [(b[k], b[k + 1]) for k in range(num_steps)]
