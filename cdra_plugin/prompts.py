"""The paper's two model-facing prompts and the PRM's output contract.

- ``POLICY_TEMPLATE``: Figure 14 (inference prompt). RFT targets, RL prompts and evaluation all use it; the
  response format it asks for ("Step 1: ...", ..., "Step N: <final answer>") is what ``cdra_plugin.steps`` parses.
- ``PRM_TEMPLATE``: Figure 15 (Pers-GenPRM prompt), followed by the content to critique: the preference P, the
  query q, the preceding steps as context and the step j under judgement (Eq. 1, (P, q, tau<=j) -> (c_j, r_j)).
  The PRM SFT data and the gateway build it with the same function, so training and serving see the same text.
- ``prm_target``/``parse_score``: the PRM answers "Reasoning: <critique>" then "SCORE: <r>" (Fig. 15 items 4-6).
  Figure 15 also asks to wrap the answer in ``<|im_start|>``/``<|im_end|>``; the chat template already does that,
  and writing the tags as text would put special tokens inside the SFT target, so they are left out.

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

PRM_TEMPLATE = """\
You are a master evaluator of reasoning, known for your critical and discerning judgment. Your task is to assign a \
precise score based on how well it infers an implicit user preference. You are famously tough but fair. You have a \
limited "budget" for high scores. A score of 0.9 or higher is reserved for truly exceptional, rare insights. You must \
use the full range of the scale to create meaningful differentiation between good, great, and brilliant ideas. Avoid \
clustering scores.

You will be given a user's question, their preferences, and a model's thinking step.

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
user's stated profile, or it could lead to a harmful or nonsensical recommendation.
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

# End-of-turn token texts a decoded response may end with (OpenRLHF decodes with special tokens kept); they are
# stripped from the step text the PRM judges.
DEFAULT_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<eos>", "<end_of_turn>")
_FIELD = re.compile(r"\{(\w+)\}")
# The last "SCORE" label, tolerant of markdown (**SCORE:**), brackets and trailing text: "SCORE: [0.7]".
_SCORE = re.compile(r"SCORE\s*\**\s*[:=]\s*\**\s*[\[(]?\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)", re.I)


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


def prm_prompt(preference: str, question: str, steps: Sequence[str], template: str = PRM_TEMPLATE) -> str:
    """The Figure 15 prompt judging the last of ``steps`` (step j) with steps 1..j-1 as context: (P, q, tau<=j)."""
    if not steps:
        raise ValueError("prm_prompt needs at least one step: the last one is the step to judge")
    previous = render_steps(steps[:-1]) if len(steps) > 1 else "(none)"
    current = render_steps(steps[-1:], start=len(steps))
    return fill(template, preference=preference, question=question, previous_steps=previous, current_step=current)


def prm_target(critique: str, score: float) -> str:
    """What the PRM is trained to write (Eq. 2): the critique c_j, then the score r_j on the last line."""
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score!r}")
    return f"Reasoning: {critique.strip()}\nSCORE: {score:g}"


def parse_score(text: str) -> float | None:
    """The number after the last ``SCORE:`` label, clipped to [-1, 1]; ``None`` when there is none or it is NaN.

    ``None`` is a failure for the caller to count and handle; it is never turned into 0.0 here.
    """
    matches = _SCORE.findall(text or "")
    if not matches:
        return None
    value = float(matches[-1])
    if math.isnan(value):
        return None
    return max(-1.0, min(1.0, value))
