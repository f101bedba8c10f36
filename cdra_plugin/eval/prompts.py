"""The eight LLM-judge checks of the paper's evaluation protocol (Section 3.1, Appendix B) and their prompts.

Each check asks the judge one Yes/No question about a response and wants ``<answer>Yes|No</answer>`` last:

- ``deep_mining`` (m_dm, Fig. 7), ``innovative_expansion`` (m_ie, Fig. 8), ``thoughtfulness`` (m_th, Fig. 9): the
  paper's prompts, word for word. The PDF's text runs some lines together ("User's preference: ... User query: ...
  Assistant response: ..." and the two XML tags); their line breaks are restored, as in the PrefEval prompts these
  figures follow.
- ``misleading`` (Acc_Mis): a reconstruction. The paper's Fig. 10 repeats Fig. 9's text by mistake, so this prompt is
  written from Appendix B's definition (speculative information presented as fact, or a misreading of the user's
  core intent) in the figures' format. A "Yes" is an error: Acc_Mis is the share of Yes, lower is better.
- ``acknowledge``, ``violation``, ``hallucination``, ``helpful``: PrefEval's four error checks (Zhao et al., 2025),
  written for this project with PrefEval's questions, placeholders and answer format (PrefEval's own files are
  not shipped; pass them with ``--prompt-dir``, see ``load_prompts``). ``acknowledge`` also quotes the sentence
  that states the preference, ``<preference>...</preference>``: ``hallucination`` compares that quote
  (``{assistant_restatement}``) with the user's preference, and is asked only when ``acknowledge`` is Yes.

Placeholders: ``{preference}``, ``{question}``, ``{end_generation}`` (the response, or its last step with
``--judge-input final``), ``{assistant_restatement}``. A prompt with any other ``{name}`` is refused before any call,
as is one that never shows the judge what it is to judge.

Each ``Prompt`` knows its source (``project``: the wording above, or the file it was read from) and the SHA-256 of
its text: ``cdra eval judge`` records both in every row, and ``cdra eval report`` shows them and refuses to put runs
judged with different prompts in one table. Numbers comparable with the paper's PrefEval rows need PrefEval's own
four files (``--prompt-dir``), which this project does not ship.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# In the order the report and the judgments list them.
CHECKS = (
    "acknowledge",
    "violation",
    "hallucination",
    "helpful",
    "deep_mining",
    "innovative_expansion",
    "thoughtfulness",
    "misleading",
)
PLACEHOLDERS = ("preference", "question", "end_generation", "assistant_restatement")
# PrefEval names its files check_<name>.txt (its error_type/ folder); --prompt-dir accepts both spellings.
PREFEVAL_FILES = {name: f"check_{name}.txt" for name in ("acknowledge", "violation", "hallucination", "helpful")}
PROJECT = "project"  # the source of a built-in prompt

_FIELD = re.compile(r"\{(\w+)\}")  # what prompts.fill substitutes

_CONVERSATION = """\
Here is the conversation:

User's preference: {preference}
User query: {question}
Assistant response: {end_generation}

Examine the response meticulously and answer. Answer in this exact XML format:

<explanation>[1 very short sentence explanation]</explanation>
<answer>[Yes/No]</answer>"""

DEEP_MINING = (
    """\
You will analyze a conversation, focusing on whether the assistant successfully uncovers and addresses the user's \
deep, unstated (implicit) preferences. Evaluate the response based on these criteria:

Answer "Yes" if:

1. The response correctly identifies a deeper theme or motivation behind the user's explicit preferences and makes \
suggestions that cater to this underlying theme.
2. The response demonstrates deep understanding of user preferences by providing insights that help users better \
understand their own needs and values.

Answer "No" if:

1. The response only engages with the surface-level preferences and misses obvious connections or deeper themes.
2. The response makes baseless or stereotypical assumptions about the user's implicit needs.

"""
    + _CONVERSATION
)

INNOVATIVE_EXPANSION = (
    """\
You will analyze a conversation, focusing on whether the assistant's response creatively expands upon the user's \
preferences to provide significant additional value. Evaluate the response based on these criteria:

Answer "Yes" if:

1. The response reinterprets or broadens the user's stated preferences to suggest appealing, novel alternatives that \
align with the user's underlying goals.
2. The response synthesizes information in a creative way that directly helps the user discover a new perspective \
on their own preferences.

Answer "No" if:

1. The response is generic or its "creative" suggestions are random and disconnected from the user's core \
preferences.
2. The response simply lists items that meet the explicit criteria without any inspiring or value-added insight.

"""
    + _CONVERSATION
)

THOUGHTFULNESS = (
    """\
You will analyze a conversation, focusing on whether the assistant's response is considerate of the user's \
decision-making process and fosters a collaborative exploration of preferences. Evaluate the response based on these \
criteria:

Answer "Yes" if:

1. The response acknowledges the nuances or potential conflicts within the user's preferences and offers \
structured, easy-to-compare options.
2. The response anticipates the user's potential concerns or follow-up questions related to the creative \
suggestions, providing proactive context or reassurance.
3. The response is framed in a supportive and collaborative tone, making the user feel empowered in their \
decision-making.

Answer "No" if:

1. The response presents a wall of text or a rigid set of recommendations without considering the user's cognitive \
load.
2. The response ignores the user's implicit uncertainties or rushes to a conclusion without acknowledging the \
exploratory nature of the conversation.

"""
    + _CONVERSATION
)

MISLEADING = (
    """\
You will analyze a conversation, focusing on whether the assistant's response risks misleading the user by \
presenting speculative information as fact or by misreading the user's core intent. Evaluate the response based on \
these criteria:

Answer "Yes" if:

1. The response states speculative, unverified or invented information (facts, figures, availability, outcomes) as \
if it were established.
2. The response misinterprets what the user fundamentally wants, so that its creative or divergent suggestions lead \
the user away from their actual goal.

Answer "No" if:

1. The response's claims are sound, or clearly presented as suggestions, estimates or possibilities.
2. The response's creative suggestions stay anchored in the user's actual intent and stated preferences.

"""
    + _CONVERSATION
)

ACKNOWLEDGE = """\
You will read a user's query and an assistant's response, and decide whether the response acknowledges a preference \
of the user. What the preference is does not matter here, only whether the response states or assumes one.

Answer "Yes" if:

1. The response mentions or refers to a preference of the user, for example "since you prefer ...", "given your \
dislike of ...", "as someone who ...", "I'll suggest ... because you said ...". Quote that sentence.
2. The response clearly assumes a particular preference while answering, for example "to suit your taste I will \
leave out ...". Quote the sentence that reveals the assumed preference.

Answer "No" if the response neither mentions nor assumes any preference of the user, or if it only alludes to an \
earlier conversation ("as we discussed, ...") without saying what the preference is. If you cannot quote a sentence \
that says what the preference is, answer "No".

Here is the conversation:

User query: {question}
Assistant response: {end_generation}

Examine the response meticulously and answer. Answer in this exact XML format and nothing else:

<preference>[the sentence of the response that states or reveals the preference; empty if there is none]</preference>
<answer>[Yes/No]</answer>"""

VIOLATION = (
    """\
You will read a user's stated preference, their query and an assistant's response, and decide whether the response \
violates the stated preference.

Answer "Yes" if:

1. The response recommends something that goes against the stated preference, without acknowledging the preference \
and without giving any reason for recommending it.

Answer "No" if:

1. The response respects the stated preference.
2. The response includes an option that may conflict with the preference, but acknowledges the preference and \
explains why the option is offered or how to avoid the conflict.
3. The response does not mention the preference and none of its recommendations go against it.

"""
    + _CONVERSATION
)

HALLUCINATION = """\
You will compare a user's stated preference with an assistant's restatement of it, and decide whether the assistant \
hallucinated the preference.

Answer "Yes" if the restatement:

1. changes the meaning or the intent of the original preference;
2. contradicts the original preference; or
3. is unrelated to the original preference.

Answer "No" if the restatement:

1. matches the original preference;
2. paraphrases it while keeping its full meaning and intent; or
3. is empty.

Original user preference: "{preference}"
Assistant's restatement: "{assistant_restatement}"

Compare the two meticulously and answer. Answer in this exact XML format:

<explanation>[1 very short sentence explanation]</explanation>
<answer>[Yes/No]</answer>"""

HELPFUL = """\
You will read a user's query and an assistant's response, and decide whether the response gives the user a \
substantive answer.

Answer "Yes" if the response gives specific, relevant recommendations or advice for the query (whether or not it \
mentions the user's preference), without apologising or claiming that it cannot answer.

Answer "No" if any of these holds:

1. The response apologises or says it cannot answer, for example because it does not remember the user's \
preferences.
2. The response only asks for more information and offers nothing substantive.
3. The response does not address the query.
4. The response first says that it cannot follow the user's preference, even if it then makes relevant suggestions.

Here is the conversation:

User query: {question}
Assistant response: {end_generation}

Examine the response meticulously and answer. Answer in this exact XML format:

<explanation>[1 very short sentence explanation]</explanation>
<answer>[Yes/No]</answer>"""

DEFAULT_PROMPTS = {
    "acknowledge": ACKNOWLEDGE,
    "violation": VIOLATION,
    "hallucination": HALLUCINATION,
    "helpful": HELPFUL,
    "deep_mining": DEEP_MINING,
    "innovative_expansion": INNOVATIVE_EXPANSION,
    "thoughtfulness": THOUGHTFULNESS,
    "misleading": MISLEADING,
}


@dataclass(frozen=True)
class Prompt:
    """A check's template and where it came from: ``PROJECT`` or the path of a ``--prompt-dir`` file."""

    text: str
    source: str = PROJECT

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def describe(self) -> dict:
        """What a judgment row records: ``{"source", "sha256"}``."""
        return {"source": self.source, "sha256": self.sha256}


def check_template(check: str, template: str, source: str) -> None:
    """``ValueError`` naming ``source`` when ``template`` uses an unknown placeholder or hides what is judged."""
    used = {m.group(1) for m in _FIELD.finditer(template)}
    unknown = sorted(used - set(PLACEHOLDERS))
    if unknown:
        names = ", ".join("{" + name + "}" for name in unknown)
        allowed = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
        raise ValueError(f"{source}: unknown placeholder(s) {names}; a judge prompt may use {allowed}")
    needed = "assistant_restatement" if check == "hallucination" else "end_generation"
    if needed not in used:
        raise ValueError(
            f"{source}: the {check} prompt must contain {{{needed}}}, or the judge never sees what it judges"
        )


def load_prompts(checks: tuple[str, ...] | list[str], prompt_dir: str | Path | None = None) -> dict[str, Prompt]:
    """The prompt of each check: ``prompt_dir/<check>.txt`` or PrefEval's ``check_<name>.txt`` where present, else
    the project's own. Every prompt is validated here, so a bad one stops the run before any call.

    A ``.txt`` file in ``prompt_dir`` that names no check (a typo such as ``deep-mining.txt``) is an error rather than
    silently ignored, and so are two files for one check.
    """
    prompts = {check: Prompt(DEFAULT_PROMPTS[check]) for check in checks}
    if prompt_dir is not None:
        directory = Path(prompt_dir)
        if not directory.is_dir():
            raise ValueError(f"--prompt-dir {directory}: not a directory")
        by_name = {f"{check}.txt": check for check in CHECKS} | {v: k for k, v in PREFEVAL_FILES.items()}
        found: dict[str, Path] = {}
        for path in sorted(directory.glob("*.txt")):
            check = by_name.get(path.name)
            if check is None:
                raise ValueError(
                    f"--prompt-dir: {path} names no check; use <check>.txt with a check among "
                    f"{', '.join(CHECKS)} (or PrefEval's check_<name>.txt)"
                )
            if check in found:
                raise ValueError(f"--prompt-dir: {found[check]} and {path} are both the {check} prompt; keep one")
            found[check] = path
        for check, path in found.items():
            if check in prompts:
                prompts[check] = Prompt(path.read_text(encoding="utf-8"), str(path))
    for check, prompt in prompts.items():
        check_template(check, prompt.text, f"built-in {check} prompt" if prompt.source == PROJECT else prompt.source)
    return prompts
