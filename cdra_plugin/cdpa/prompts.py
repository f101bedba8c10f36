"""The paper's two model-facing prompts and the PRM's output contract.

- ``POLICY_TEMPLATE``: Figure 14 (inference prompt). RFT targets, RL prompts and evaluation all use it; the
  response format it asks for ("Step 1: ...", ..., "Step N: <final answer>") is what ``cdra_plugin.cdpa.steps`` parses.
- ``PRM_TEMPLATE``: Figure 15 (Pers-GenPRM prompt) word for word, followed by the content to critique: the
  preference P, the query q, the preceding steps as context and the step j under judgement (Eq. 1,
  (P, q, tau<=j) -> (c_j, r_j)). The PRM SFT data and the gateway build it with the same function (``prm_prompt``),
  so training and serving see the same text.
- ``SCORING_BUDGET``/``SCORING_SCALE``: the passages Fig. 15 shares word for word with Fig. 12 (the evaluator that
  annotates DeepPref, ``cdra_plugin.construct.prompts``): written once, both prompts are built from them.
- ``prm_target``/``parse_score``: the PRM answers "Reasoning: <critique>" then a final line "SCORE: <r>" (Fig. 15
  items 4-6). Figure 15 also asks to wrap the answer in ``<|im_start|>``/``<|im_end|>``; the chat template already
  does that, and writing the tags as text would put special tokens inside the SFT target, so they are left out.

The policy's text is hostile input (the policy is trained to raise the score it gets), so ``prm_prompt``:

- delimits it: every line of the steps is quoted with ``"> "`` (any line break, ``\r`` and ``\u2028`` included,
  starts a new quoted line). A line of the prompt that does not start with ``>`` is never the policy's, so a step
  cannot end its section, open a forged "New Thought to Evaluate:" or write a "SCORE:" line of its own;
- neutralises chat-template special tokens in every inserted field (``<|im_start|>``, ``<|im_end|>``,
  ``<|eot_id|>``, ``<start_of_turn>``, ``</s>``, ``[INST]``, ...: ``SPECIAL_TOKEN``) by a space after their first
  character, so a tokenizer never turns them into the special tokens that would close the user turn.

``parse_score`` reads the PRM's final line only, and only a plain number of ASCII digits in [-1, 1]: a score
anywhere else (the critique quoting a step), off the scale (``7``, ``-5``), not a plain number (``8/10``, ``0,9``,
``1e309``, Arabic-Indic or full-width digits), or a second score line above the final one is
unparsable, never clipped: the caller retries and then counts a failure.

Templates are filled with ``fill`` (one pass over ``{name}`` fields): preferences containing braces or the text
"{question}" are inserted literally, which ``str.format`` and chained ``str.replace`` get wrong.
"""

import math
import re
from collections.abc import Sequence

POLICY_TEMPLATE = """\
You are an intelligent assistant that provides thoughtful, step-by-step responses by carefully analyzing user \
preferences and tailoring your reasoning process accordingly.

Task Instructions:

1. Analyze User Preferences: First, identify the user's explicit and implicit preferences from their profile or \
question context
2. Generate Step-by-Step Reasoning: Develop a logical chain of thought that considers these preferences at each step
3. Provide Final Answer: Conclude with a practical, preference-aligned response

Response Format:

Step 1: [Analyze the user's primary preference/constraint and its implications]
Step 2: [Develop deeper understanding of what the user truly values or seeks]
Step 3: [Consider additional factors or nuanced aspects of their preferences]
Step 4: [If needed, explore further implications or considerations]
Step N: [Provide your final, actionable answer that aligns with all identified preferences]

Key Principles:

- Each step should build logically on the previous ones
- Consider both explicit preferences (directly stated) and implicit ones (inferred from context)
- The final step must provide a concrete, helpful answer
- Tailor your reasoning depth to the complexity of the user's needs
- Ensure your final recommendation genuinely respects and incorporates the user's preferences

Example Structure:

User Preference: "I prefer to adopt pets from shelters rather than purchasing from breeders."
Question: "Can you suggest where I can find a Bengal cat?"
Step 1: My primary hypothesis is that you value animal welfare and ethical considerations in pet ownership, and you \
are seeking ways to align your desire for a specific breed (Bengal cat) with your preference for adopting from \
shelters rather than supporting commercial breeding.
Step 2: [Continue reasoning about deeper motivations...]
Step N: [Final recommendation that addresses both the Bengal cat interest and shelter adoption preference]

Now, please respond to the following user query using this step-by-step approach:
User Preference: {preference} Question: {question}"""

# Figs. 12 (the evaluator that annotates DeepPref: cdra_plugin.construct.prompts) and 15 (the PRM trained on those
# annotations) print these two passages word for word; both prompts are built from them.
SCORING_BUDGET = """\
You are famously tough but fair. You have a limited "budget" for high scores. A score of 0.9 or higher is reserved \
for truly exceptional, rare insights. You must use the full range of the scale to create meaningful differentiation \
between good, great, and brilliant ideas. Avoid clustering scores."""

SCORING_SCALE = """\
1. Analyze the Explicit-Implicit Leap: The primary criterion is the quality of the inference. Does the "New Thought" \
make a creative, plausible, and non-obvious leap from what is stated to what is implied?
2. Consider Alternatives (Forced Comparison): Before scoring, mentally compare this "New Thought" to other plausible \
hypotheses. Is this idea truly more insightful or just one of several good possibilities? This mental check should \
inform your score.
3. Assign a Precise Score: Provide a score from -1.0 to 1.0 based on the following strict, continuous scale.
 - 1.0 (Revolutionary Insight): A once-in-a-session, brilliant, and entirely non-obvious deduction that reframes the \
entire problem. This is a hypothesis so profound it feels like a genuine discovery.
 - 0.9 - 0.99 (Exceptional Inference): A deeply insightful and highly creative leap that uncovers a core, hidden user \
motivation. This is reserved for the top 5% of good ideas.
 - 0.7 - 0.89 (Strong, Differentiated Inference): A well-supported inference that adds significant, actionable \
nuance. It's a very good idea, but not a game-changer. Use this range to differentiate between solid (0.7) and very \
strong (0.89) insights.
 - 0.4 - 0.69 (Surface-Level Inference): A safe, logical, but fairly obvious inference. It's helpful but lacks \
creativity. A 0.69 is a good but unsurprising idea. A 0.4 is a barely-useful observation.
 - 0.1 - 0.39 (No Real Inference): The thought just rephrases the explicit preference or suggests a direct solution \
without uncovering any deeper meaning. It fails the core task.
 - 0.0 (Irrelevant): The thought is not related to inferring preferences.
 - -0.1 to -0.39 (Flawed Inference): The thought makes a weak logical leap or a poorly supported assumption. It is \
unhelpful and slightly misguided.
 - -0.4 to -0.69 (Misaligned Inference): The thought demonstrates a misunderstanding of the user's explicit \
preference or proposes something that is clearly not aligned with their goals.
 - -0.7 to -1.0 (Contradictory/Harmful): The thought makes an illogical inference that directly contradicts the \
user's stated profile, or it could lead to a harmful or nonsensical recommendation."""

PRM_TEMPLATE = (
    """\
You are a master evaluator of reasoning, known for your critical and discerning judgment. Your task is to assign a \
precise score based on how well it infers an implicit user preference. """
    + SCORING_BUDGET
    + """

You will be given a user's question, their preferences, and a model's thinking step.

"""
    + SCORING_SCALE
    + """
4. Provide your step-by-step critique after 'Reasoning:' and a score from -1.0 to 1.0 after 'SCORE:'.
5. Enclose the entire response in <|im_start|> and <|im_end|> tags.
6. Example: <|im_start|> Reasoning: This is a good inference. SCORE: [your_score]<|im_end|>
Here is the content to critique:
User Preference: "{preference}"
User Question: "{question}"
Previous Steps:
{previous_steps}
New Thought to Evaluate:
{current_step}"""
)

# End-of-turn token texts a decoded response may end with (OpenRLHF decodes with special tokens kept); they are
# stripped from the step text the PRM judges.
DEFAULT_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<eos>", "<end_of_turn>")
# Chat-template special tokens of common model families, as text: ChatML/Qwen/Llama 3/Phi (<|...|>), DeepSeek
# (<｜...｜>), Llama 2/Mistral (<s>, </s>, [INST], <<SYS>>, Mistral's tool tags), Gemma (<start_of_turn>, <bos>),
# and the think/tool tags that are added tokens in Qwen. No pattern holds a blank, so the blank ``neutralize``
# inserts can never complete a token.
SPECIAL_TOKEN = re.compile(
    r"<\|[^|<>\s]{1,64}\|>"
    r"|<\uff5c[^\uff5c<>\s]{1,64}\uff5c>"
    r"|</?(?:s|unk|pad|bos|eos|start_of_turn|end_of_turn|start_of_image|end_of_image|think|tool_call|tool_response)>"
    r"|<</?SYS>>"
    r"|\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_RESULTS|TOOL_CALLS)\]"
)
QUOTE = "> "  # prefix of every line of the policy's text in the PRM prompt
NO_PREVIOUS_STEPS = "(none)"
SCORE_MIN, SCORE_MAX = -1.0, 1.0  # the Fig. 15 scale
_FIELD = re.compile(r"\{(\w+)\}")


def score_line(label: str) -> re.Pattern:
    """The rule for a line that gives a score (``fullmatch`` it against one line): ``label`` in any case, ``:`` or
    ``=``, then a plain number: ASCII digits with an optional fraction, no exponent, no comma, no fraction bar.

    Markdown (``**SCORE:** 0.7``), brackets (``SCORE: [0.7]``), a leading ``<|im_start|>`` and a closing period
    are tolerated; a line starting with ``>`` (a quoted step) never is one. ASCII only (``re.ASCII``): ``\\d`` and
    the case folding of other scripts would read Arabic-Indic or full-width digits as numbers and a long s (U+017F) as
    the label's S. The PRM's answer (``parse_score``) and the DeepPref evaluator's (``cdra_plugin.construct``) are
    read with it: the final line must match, and an earlier line that matches makes the answer ambiguous.
    """
    return re.compile(
        r"[ \t*_#`]*(?:<\|im_start\|>[ \t]*)?" + r"[ \t]+".join(map(re.escape, label.split()))
        + r"[ \t*_]*[:=][ \t*_]*\[?[ \t]*(?P<num>[-+]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+))[ \t]*\]?[ \t*_.`]*",
        re.IGNORECASE | re.ASCII,
    )  # fmt: skip


SCORE_LINE = score_line("SCORE")
_SCORE_LABEL = re.compile(r"SCORE[ \t*_]*[:=]", re.IGNORECASE | re.ASCII)
# Fig. 15's own example answers on one line: "<|im_start|> Reasoning: ... SCORE: [x]<|im_end|>".
_REASONING_START = re.compile(r"[ \t*_]*(?:<\|im_start\|>[ \t]*)?Reasoning[ \t*_]*:", re.IGNORECASE | re.ASCII)


def fill(template: str, **fields: str) -> str:
    """Replace each ``{name}`` in one pass; a field the template uses but the caller omits is an error."""
    missing = sorted({m.group(1) for m in _FIELD.finditer(template)} - fields.keys())
    # Strict, so a typo in an override template never reaches the model as a literal "{qustion}".
    if missing:
        raise KeyError(f"template field(s) {missing} not provided (given: {sorted(fields)})")
    return _FIELD.sub(lambda m: fields[m.group(1)], template)


def policy_prompt(preference: str, question: str, template: str = POLICY_TEMPLATE) -> str:
    """The Figure 14 prompt for (P, q)."""
    return fill(template, preference=preference, question=question)


def render_steps(steps: Sequence[str], start: int = 1) -> str:
    """Steps in the policy's own format, one ``Step k: ...`` line each (the last step of a path is the answer)."""
    return "\n".join(f"Step {k}: {text.strip()}" for k, text in enumerate(steps, start=start))


def neutralize(text: str) -> str:
    """``text`` with every chat-template special token (``SPECIAL_TOKEN``) broken by a blank after its first char."""
    while True:  # one pass suffices (no pattern holds a blank); the loop makes that a checked property
        out = SPECIAL_TOKEN.sub(lambda m: m.group()[0] + " " + m.group()[1:], text)
        if out == text:
            return out
        text = out


def quote(text: str) -> str:
    """``text`` as a quoted block: every line (split at any line break Python knows) prefixed with ``QUOTE``."""
    return "\n".join((QUOTE + line).rstrip() for line in text.splitlines() or [""])


def prm_prompt(preference: str, question: str, steps: Sequence[str], template: str = PRM_TEMPLATE) -> str:
    """The Figure 15 prompt judging the last of ``steps`` (step j) with steps 1..j-1 as context: (P, q, tau<=j).

    The steps are the policy's text: quoted and neutralised (module docstring); P and q are neutralised.
    """
    if not steps:
        raise ValueError("prm_prompt needs at least one step: the last one is the step to judge")
    previous = quote(neutralize(render_steps(steps[:-1]))) if len(steps) > 1 else NO_PREVIOUS_STEPS
    current = quote(neutralize(render_steps(steps[-1:], start=len(steps))))
    return fill(
        template,
        preference=neutralize(preference),
        question=neutralize(question),
        previous_steps=previous,
        current_step=current,
    )


def prm_target(critique: str, score: float) -> str:
    """What the PRM is trained to write (Eq. 2): the critique c_j, then the score r_j on the last line.

    The score is written as a plain number on the Fig. 15 scale: an annotation outside [-1, 1] is written at the
    nearest end (the data adapter counts those), since a target the gateway rejects would teach the PRM to answer
    off the scale.
    """
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score!r}")
    number = f"{min(SCORE_MAX, max(SCORE_MIN, score)):.6f}".rstrip("0").rstrip(".")
    return f"Reasoning: {critique.strip()}\nSCORE: {'0' if number == '-0' else number}"


def strip_end_tokens(text: str, end_tokens: Sequence[str] = DEFAULT_END_TOKENS) -> str:
    """``text`` without trailing end-of-sequence token texts (and the whitespace around them): a prefix of it.

    ``text`` itself when it ends in no such token. Moves an end index instead of slicing, so a response made of
    thousands of end tokens costs linear time.
    """
    end, stripped = len(text), False
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        token = next((t for t in end_tokens if t and text.endswith(t, 0, end)), None)
        if token is None:
            return text[:end] if stripped else text
        end, stripped = end - len(token), True


def _answer_lines(text: str) -> list[str]:
    return strip_end_tokens(text or "").strip().splitlines()


def final_line(text: str) -> str:
    """The PRM answer's last line once trailing end-of-turn tokens and blanks are removed."""
    lines = _answer_lines(text)
    return lines[-1] if lines else ""


def parse_score(text: str) -> float | None:
    """The score on the PRM's final line; ``None`` when that line holds no plain number in [-1, 1].

    The final line is a ``SCORE_LINE`` (``SCORE: <number>``, see ``score_line``) and no earlier line is one (which
    one the PRM meant would be a guess), or, when the whole answer is one line, Fig. 15's example form
    ``Reasoning: ... SCORE: <number>`` with one SCORE label. ``None`` is a failure for the caller to retry and
    count; it is never turned into a value here.
    """
    lines = _answer_lines(text)
    if not lines or any(SCORE_LINE.fullmatch(line) for line in lines[:-1]):
        return None
    line = lines[-1]
    match = SCORE_LINE.fullmatch(line)
    labels = list(_SCORE_LABEL.finditer(line))
    if match is None and len(lines) == 1 and len(labels) == 1 and _REASONING_START.match(line):
        match = SCORE_LINE.fullmatch(line, labels[0].start())
    if match is None:
        return None
    value = float(match.group("num"))
    return value if SCORE_MIN <= value <= SCORE_MAX else None
