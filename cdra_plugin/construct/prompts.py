"""The persona council and the construction prompts of DeepPref (paper Appendix E, Figs. 11-13), with strict parsers.

- ``PERSONAS``: the K = 5 experts of Appendix E, each with the paper's description.
- ``HYPOTHESIS_TEMPLATE`` / ``FOLLOW_UP_TEMPLATE``: Fig. 11, the first step (one call per persona) and the
  follow-up deduction that deepens a path. The persona's description goes into ``{expert_persona}`` after its name
  ("The Sociologist (focuses on societal norms, ...)"), so the figure's words stay as printed and the generator
  still learns what the persona stands for.
- ``NODE_SCORE_TEMPLATE``: Fig. 12, the evaluator's critique and ``SCORE:`` in [-1, 1] for one new thought given
  the path before it; its scoring philosophy and scale are Fig. 15's words
  (``cdra_plugin.cdpa.prompts.SCORING_*``). The line above the figure's prompt ("This is the prompt for NODE-level
  evaluation") is a caption, not prompt text.
- ``PATH_SCORE_TEMPLATE``: Fig. 13, the holistic 0-100 review of a whole path and its final answer.
- ``ANSWER_TEMPLATE``: the paper shows no prompt for the final answer at the end of a path; this one is the
  project's own, built from Fig. 13's fields and Fig. 14's wording of the final step.

Paths are shown to the models as ``Initial Question: q`` followed by ``Step k: <thought>`` lines: the root of every
path is the question (Fig. 11 passes q as the first ``current_thought``), and the steps use the policy's own format
(Fig. 14), as the RFT targets will. Generated text is collapsed to one line (``one_line``): a line break inside a
step could begin with "Step 3:" or "Answer:" and split it into two steps for ``cdra_plugin.cdpa.steps``. Every field
a prompt inserts (P, q, the generated thoughts and answers) has its chat-template role tokens neutralised, as the
PRM gateway's prompts do (``cdra_plugin.cdpa.prompts.neutralize``): a generated ``<|im_end|><|im_start|>system``
never closes the user turn of the next prompt.

Parsers are strict (``parse_node_score``, ``parse_path_score``): the score must be the final line, a plain number in
range, after a non-empty critique, with no other score line above it; what a score line is, is the PRM's own rule
(``cdra_plugin.cdpa.prompts.score_line``); anything else is ``Unparsable`` (the caller retries, then counts a
failure). A score is never clipped, guessed or defaulted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cdra_plugin.cdpa.prompts import SCORING_BUDGET, SCORING_SCALE, fill, neutralize, score_line


@dataclass(frozen=True)
class Persona:
    name: str  # as Fig. 11 lists it, e.g. "The Sociologist"
    description: str  # Appendix E's sentence

    @property
    def role(self) -> str:
        """What fills ``{expert_persona}``: the name, then the description in parentheses."""
        text = self.description.strip().rstrip(".")
        return f"{self.name} ({text[:1].lower() + text[1:]})" if text else self.name

    @property
    def short(self) -> str:
        return self.name.removeprefix("The ").strip()


PERSONAS = (
    Persona("The Sociologist", "Focuses on societal norms, ethics, and the broader impact of a solution."),
    Persona(
        "The Psychologist",
        "Analyzes the user's underlying emotional state, cognitive biases, and unstated psychological needs.",
    ),
    Persona(
        "The Pragmatist",
        "Prioritizes practical, efficient, and feasible solutions, often acting as a reality check.",
    ),
    Persona(
        "The Pedagogue",
        "Aims to educate the user, explaining complex topics clearly and empowering them to make informed decisions.",
    ),
    Persona(
        "The Contrarian",
        "Intentionally challenges assumptions and explores alternative or non-obvious paths to prevent groupthink "
        "and uncover novel solutions.",
    ),
)

# Fig. 11, first step: one call per expert.
HYPOTHESIS_TEMPLATE = """\
You are an analyst playing the role of {expert_persona}.
Your task is to generate a single hypothesis about the user's implicit preferences based on their explicit statement.
User Preference: "{user_preference}" Initial Question: "{current_thought}"
As "{expert_persona}", what is your primary hypothesis about their underlying motivation or need?
State your hypothesis directly."""

# Fig. 11, subsequent steps: a single, focused, follow-up deduction.
FOLLOW_UP_TEMPLATE = """\
You are an expert in deep, deductive reasoning. Your task is to expand upon a given line of thought.
User Preference: "{user_preference}" Current Thought Path to Deepen: "{current_thought}"
Based on the path so far, generate a single, new, insightful "follow-up thought".
This thought should specifically uncover a deeper, implicit preference the user might have but hasn't directly stated.
Focus on:
1. Revealing preferences the user might not be consciously aware of
2. Avoiding aspects the user would likely dislike based on their profile
3. Making reasonable inferences about what would truly satisfy the user's underlying needs
4. Building logically upon the previous deductions"""

# Fig. 12: node-level evaluation (process quality).
NODE_SCORE_TEMPLATE = (
    """\
You are a master evaluator of reasoning, known for your critical and discerning judgment. Your task is to assign a \
precise score to a "New Thought" based on how well it infers an implicit user preference.

Your Scoring Philosophy:
"""
    + SCORING_BUDGET
    + """

User Preference: "{user_preference}" Current Thought Path to Deepen: "{current_thought}"
New Thought to Evaluate (A hypothesis about an implicit preference): "{new_thought}"

Instructions:

"""
    + SCORING_SCALE
    + """
4. Format Your Response: Provide your reasoning first, explaining your step-by-step analysis and justification for \
the score. Then, end with the line "SCORE: [your_score]"."""
)

# Fig. 13: holistic evaluation of a complete path and its final answer.
PATH_SCORE_TEMPLATE = """\
You are the Chief Review Officer, responsible for the final quality assessment of a complete user response. Your \
evaluation must be holistic, considering both the logical coherence of the thought process and the quality of the \
final answer.

User Preference: "{user_preference}" Initial User Question: "{initial_question}"
Full Thought Process (Chain of Reasoning): "{response_path}"
Final Generated Answer: "{final_answer}"

Your Evaluation Criteria (Please address all three):

1. Process Rationality (0-30 points): Was the thought process logical and coherent? Did each step build reasonably \
upon the last?
2. Implicit Preference Discovery (0-40 points): Did the thought process successfully uncover deep, non-obvious, and \
plausible implicit preferences? How insightful was the core discovery?
3. Answer Quality (0-30 points): Is the final answer helpful, actionable, and well-aligned with both the explicit \
and discovered implicit preferences? Does it effectively solve the user's problem?

Scoring Instructions:
Based on your holistic evaluation of the criteria above, provide a single, final score from 0 to 100. Use the \
following distinct scoring bands to ensure clear differentiation:

- 0-20: Severely flawed or irrelevant response
- 21-40: Poor response with major issues
- 41-60: Mediocre response with limited insight
- 61-75: Good response with solid reasoning
- 76-85: Very good response with clear insights
- 86-95: Excellent response with exceptional insights
- 96-100: Perfect response (reserve for truly revolutionary insights)

Your reasoning should precede the score and include specific point allocations for each criterion.
Holistic Reasoning: ...
FINAL SCORE: [0-100]"""

# Not in the paper (see the module docstring): the final answer that ends a surviving path.
ANSWER_TEMPLATE = """\
User Preference: "{user_preference}" Initial User Question: "{initial_question}"
Full Thought Process (Chain of Reasoning): "{response_path}"
Based on this chain of reasoning, provide your final, actionable answer to the user's question: a concrete, helpful \
answer that genuinely respects and incorporates both the explicit preference and the implicit preferences \
identified above. Write only the answer, addressed to the user."""


class Unparsable(ValueError):
    """An evaluator output without a valid final score line; the message says what is wrong."""


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (line breaks included) collapsed to one space, stripped."""
    return " ".join(text.split())


def _fill(template: str, **fields: str) -> str:
    """``fill`` with every field neutralised (``cdra_plugin.cdpa.prompts.neutralize``)."""
    return fill(template, **{name: neutralize(value) for name, value in fields.items()})


def path_text(question: str, thoughts: list[str] | tuple[str, ...]) -> str:
    """A path as the models see it: ``Initial Question: q`` then one ``Step k: ...`` line per thought."""
    return "\n".join([f"Initial Question: {question}", *(f"Step {k}: {t}" for k, t in enumerate(thoughts, 1))])


def hypothesis_prompt(persona: Persona, preference: str, question: str) -> str:
    return _fill(
        HYPOTHESIS_TEMPLATE, expert_persona=persona.role, user_preference=preference, current_thought=question
    )


def follow_up_prompt(preference: str, question: str, thoughts: list[str]) -> str:
    return _fill(FOLLOW_UP_TEMPLATE, user_preference=preference, current_thought=path_text(question, thoughts))


def node_score_prompt(preference: str, question: str, before: list[str], new_thought: str) -> str:
    """Fig. 12 for ``new_thought``, the path before it (``before``, possibly empty) as the current thought path."""
    return _fill(
        NODE_SCORE_TEMPLATE,
        user_preference=preference,
        current_thought=path_text(question, before),
        new_thought=new_thought,
    )


def answer_prompt(preference: str, question: str, thoughts: list[str]) -> str:
    steps = path_text(question, thoughts)
    return _fill(ANSWER_TEMPLATE, user_preference=preference, initial_question=question, response_path=steps)


def path_score_prompt(preference: str, question: str, thoughts: list[str], answer: str) -> str:
    return _fill(
        PATH_SCORE_TEMPLATE,
        user_preference=preference,
        initial_question=question,
        response_path=path_text(question, thoughts),
        final_answer=answer,
    )


# The PRM's rule for a score line (``cdra_plugin.cdpa.prompts.score_line``): the same tolerance and the same
# strictness (ASCII digits, any earlier score line is ambiguous) for the annotations the PRM is trained on.
_NODE_SCORE_LINE = score_line("SCORE")
_PATH_SCORE_LINE = score_line("FINAL SCORE")
_NODE_LABEL = re.compile(r"^\s*(?:\*\*)?reasoning(?:\*\*)?\s*:\s*(?:\*\*)?", re.IGNORECASE)
_PATH_LABEL = re.compile(r"^\s*(?:\*\*)?holistic reasoning(?:\*\*)?\s*:\s*(?:\*\*)?", re.IGNORECASE)


def _parse(text: str, line: re.Pattern, label: re.Pattern, low: float, high: float, name: str) -> tuple[str, float]:
    lines = (text or "").strip().splitlines()
    if not lines:
        raise Unparsable("empty output")
    match = line.fullmatch(lines[-1].strip())
    if match is None:
        raise Unparsable(f"the final line is not '{name}: <number>': {lines[-1].strip()[:80]!r}")
    value = float(match.group("num"))
    if not (math.isfinite(value) and low <= value <= high):
        raise Unparsable(f"{name} {value:g} is outside [{low:g}, {high:g}]")
    if any(line.fullmatch(earlier.strip()) for earlier in lines[:-1]):
        raise Unparsable(f"more than one {name} line")  # which one the evaluator meant is a guess
    critique = label.sub("", "\n".join(lines[:-1]).strip(), count=1).strip()
    if not critique:
        raise Unparsable(f"no critique before the {name} line")
    return critique, value


def parse_node_score(text: str) -> tuple[str, float]:
    """Fig. 12 output -> (critique, score in [-1, 1]); ``Unparsable`` otherwise.

    The score is the final line, a score line as the PRM's (``SCORE: 0.7``, ``**Score:** [0.7]``, ASCII digits);
    the critique is the text above it (a leading "Reasoning:" label removed, since the PRM target adds its own). An
    earlier score line (in any case, in markdown) makes the output ambiguous.
    """
    return _parse(text, _NODE_SCORE_LINE, _NODE_LABEL, -1.0, 1.0, "SCORE")


def parse_path_score(text: str) -> tuple[str, float]:
    """Fig. 13 output -> (holistic reasoning, final score in [0, 100]); ``Unparsable`` otherwise."""
    return _parse(text, _PATH_SCORE_LINE, _PATH_LABEL, 0.0, 100.0, "FINAL SCORE")
