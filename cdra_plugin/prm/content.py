"""What a step's text holds, as the reward counts it: its letters and digits, and whether it is degenerate.

The policy writes whatever raises its reward, so nothing it can add without saying more may count as content:

- ``content_chars``: letters of any script (Unicode L*: ``str.isalpha``) and decimal digits of any script (Nd:
  ``str.isdecimal``). Not ``str.isalnum``: that also counts other numerics (N[lo]: superscripts, circled and
  fractional numbers), cheap padding that reads as noise. Neither counts combining marks (so zalgo stacks weigh
  nothing; Indic vowel signs don't either, which only lightens steps of those scripts evenly), punctuation,
  spaces or format characters (zero-width spaces and joiners, soft hyphens, bidi marks: Cf). The Hangul fillers
  U+115F, U+1160, U+3164, U+FFA0 are letters (Lo) that render as nothing: they are excluded by name. The weight of
  a step under ``--reward-aggregation weighted_mean`` (``cdra_plugin.prm.reward``).
- ``degenerate_steps``: the degenerate-step guard (``--degenerate-guard``, on by default). A step is ``repeated``
  when its words equal an earlier step's of the same response (``words``: NFKC, case folded, format characters and
  combining marks removed, runs of letters and digits; so spacing, punctuation, width and case do not make a copy
  new), and ``non_letters`` when fewer than half of its visible characters (all but white space) are letters or
  digits (empty steps included): padding with punctuation, emoji or invisible characters makes a step this. The
  gateway gives such a step the empty-step score without a PRM call (``cdra_plugin.prm.scoring``). In code or
  maths, steps of symbols and repeated lines are normal: turn the guard off there. Homoglyphs (a Cyrillic "a"
  for a Latin one) still make a repeat new: the PRM judges it, and under ``min`` a copy cannot raise the reward.
"""

import unicodedata

INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
MIN_CONTENT_FRACTION = 0.5  # of a step's visible characters; below it the step is mostly not letters or digits
_DROPPED = frozenset(("Cf", "Mn", "Mc", "Me"))  # format characters and combining marks: not part of a word
# The same rules on ASCII text (most responses), at C speed: bytes tables of its non-content characters.
_ASCII_OTHER = bytes(c for c in range(128) if not chr(c).isalnum())
_ASCII_TO_SPACE = bytes.maketrans(_ASCII_OTHER, b" " * len(_ASCII_OTHER))


def is_content(ch: str) -> bool:
    return (ch.isalpha() and ch not in INVISIBLE_LETTERS) or ch.isdecimal()


def content_chars(text: str) -> int:
    """The letters and decimal digits of ``text`` (module docstring)."""
    if text.isascii():
        return len(text.encode().translate(None, _ASCII_OTHER))
    return sum(map(is_content, text))


def words(text: str) -> str:
    """``text`` as a comparable string of words: NFKC, case folded, runs of letters and digits joined by a space."""
    if text.isascii():
        return " ".join(text.lower().encode().translate(_ASCII_TO_SPACE).decode().split())
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch if is_content(ch) else " " for ch in folded if unicodedata.category(ch) not in _DROPPED)
    return " ".join(kept.split())


def degenerate_steps(texts: list[str]) -> list[str | None]:
    """For each step text of one response: ``"repeated"``, ``"non_letters"`` or None (module docstring)."""
    seen, found = set(), []
    for text in texts:
        visible = len("".join(text.split()))  # all but white space
        if not visible or content_chars(text) < MIN_CONTENT_FRACTION * visible:
            found.append("non_letters")
            continue
        key = words(text)
        found.append("repeated" if key in seen else None)
        seen.add(key)
    return found
