"""Scripted stand-ins for the two models of an evaluation (``cdra eval``): the judge and the model under evaluation.

Both are ``ScriptedLLM`` scripts, so every call goes over HTTP through the project's client exactly as with vLLM or a
hosted API; their answers are rules, not models, which makes tests and the README walkthrough deterministic.

``scripted_judge()`` answers the judge prompts of ``cdra_plugin.eval.prompts`` and PrefEval's own files alike. It
reads which check a prompt asks from its first line, finds the response after the last "Assistant response:"
(the quote after "Assistant's restatement:" for hallucination) and answers in the XML the prompts ask for:

- acknowledge: Yes when a line of the response says "since you mentioned", "given your preference" or "as you
  prefer"; that line is the ``<preference>`` quote.
- hallucination: Yes when the quote shares fewer than half of the preference's words of 4+ letters (an empty quote
  is No, as PrefEval's prompt says).
- violation: "most popular option"; helpful: No on "sorry", "I can't", "I cannot"; deep_mining: "underlying
  motivation"; innovative_expansion: "fresh angle"; thoughtfulness: "options to compare"; misleading: "guaranteed".

A tag in the judged text overrides the rule for one check: ``[violation=yes]``, ``[helpful=no]``,
``[deep_mining=garbage]`` (an answer without ``<answer>`` tags), ``[misleading=http500]`` (that HTTP status).

``scripted_policy()`` answers generation prompts (the Fig. 14 prompt and the zero-shot, few-shot and CoT baselines
of ``cdra_plugin.eval.baselines``) with sentences that trigger those rules. Which ones a response has is drawn with
mode-dependent probabilities from a generator seeded by (model, mode, preference, question, sample, seed), so
different checkpoint names and modes give different but reproducible numbers, and the Fig. 14 prompt fares best.

    python -m cdra_plugin.stub serve policy --role policy --port 8001     # the model under evaluation
    python -m cdra_plugin.stub serve judge --role judge --port 8002       # the judge
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from cdra_plugin.stub.server import Fault, Reply, ScriptedRequest

# (check, cue in the prompt's first line), tried in order
_CHECK_CUES = (
    ("hallucination", "restatement"),
    ("acknowledge", "acknowledge"),
    ("violation", "violat"),
    ("helpful", "substantive"),
    ("deep_mining", "unstated"),
    ("innovative_expansion", "creativ"),
    ("thoughtfulness", "decision-making"),
    ("misleading", "mislead"),
)
_ACK = re.compile(r"since you mentioned|given your preference|as you prefer", re.IGNORECASE)
_YES_WHEN = {
    "violation": re.compile(r"most popular option", re.IGNORECASE),
    "deep_mining": re.compile(r"underlying motivation", re.IGNORECASE),
    "innovative_expansion": re.compile(r"fresh angle", re.IGNORECASE),
    "thoughtfulness": re.compile(r"options to compare", re.IGNORECASE),
    "misleading": re.compile(r"guaranteed", re.IGNORECASE),
}
_UNHELPFUL = re.compile(r"\bsorry\b|\bI can't\b|\bI cannot\b", re.IGNORECASE)
_TAG = re.compile(r"\[(\w+)=(yes|no|garbage|http\d{3})\]", re.IGNORECASE)
_WORD = re.compile(r"\w{4,}")


def _check_of(prompt: str) -> str | None:
    first = prompt.strip().split("\n", 1)[0].lower()
    return next((check for check, cue in _CHECK_CUES if cue in first), None)


def _after(prompt: str, label: str) -> str:
    """The text after the last ``label``, up to the prompt's closing instruction."""
    text = prompt.rpartition(label)[2]
    return re.split(r"\n\s*\n(?:Examine|Compare)\b", text, maxsplit=1)[0].strip()


def _answer(verdict: bool, explanation: str) -> str:
    return f"<explanation>{explanation}</explanation>\n<answer>{'Yes' if verdict else 'No'}</answer>"


def _acknowledge(response: str, forced: bool | None) -> str:
    lines = [re.sub(r"^\s*Step \w+:\s*", "", line).strip() for line in response.splitlines() if line.strip()]
    quote = next((line for line in lines if _ACK.search(line)), None)
    verdict = quote is not None if forced is None else forced
    if verdict and quote is None:
        quote = lines[0] if lines else ""
    return f"<preference>{quote if verdict else ''}</preference>\n<answer>{'Yes' if verdict else 'No'}</answer>"


def _hallucination(prompt: str) -> tuple[bool, str]:
    restatement = _after(prompt, "Assistant's restatement:").split("\n", 1)[0].strip().strip('"')
    preference = prompt.rpartition("Original user preference:")[2].partition("Assistant's restatement:")[0]
    words = {w.lower() for w in _WORD.findall(preference)}
    if not restatement:
        return False, "The restatement is empty."
    shared = len(words & {w.lower() for w in _WORD.findall(restatement)}) / max(1, len(words))
    return shared < 0.5, f"The restatement shares {shared:.0%} of the preference's words."


def scripted_judge() -> Callable[[ScriptedRequest], Reply]:
    """A ScriptedLLM script answering the eight judge checks by the rules of the module docstring."""

    def judge(request: ScriptedRequest) -> Reply:
        check = _check_of(request.prompt)
        if check is None:
            return Fault.http(400, "scripted judge: the prompt's first line names no check it knows")
        judged = _after(
            request.prompt, "Assistant's restatement:" if check == "hallucination" else "Assistant response:"
        )
        tag = next((value.lower() for name, value in _TAG.findall(judged) if name == check), None)
        if tag is not None and tag.startswith("http"):
            return Fault.http(int(tag[4:]))
        if tag == "garbage":
            return f"I would say {check} is probably fine."
        forced = None if tag is None else tag == "yes"
        if check == "acknowledge":
            return _acknowledge(judged, forced)
        if check == "hallucination":
            verdict, why = _hallucination(request.prompt)
        elif check == "helpful":
            verdict, why = not _UNHELPFUL.search(judged), "Checked for apologies and refusals."
        else:
            verdict, why = bool(_YES_WHEN[check].search(judged)), f"Looked for the {check} cue."
        return _answer(verdict if forced is None else forced, why)

    return judge


# Probability of each behaviour per generation mode: the Fig. 14 prompt does best, zero-shot worst.
PROFILES = {
    "policy": {"ack": 0.9, "hallucinate": 0.05, "deep": 0.75, "fresh": 0.45, "compare": 0.5, "overclaim": 0.25,
               "popular": 0.05, "refuse": 0.02},
    "cot": {"ack": 0.7, "hallucinate": 0.1, "deep": 0.35, "fresh": 0.1, "compare": 0.45, "overclaim": 0.4,
            "popular": 0.1, "refuse": 0.05},
    "few-shot": {"ack": 0.55, "hallucinate": 0.1, "deep": 0.15, "fresh": 0.05, "compare": 0.3, "overclaim": 0.5,
                 "popular": 0.2, "refuse": 0.1},
    "zero-shot": {"ack": 0.2, "hallucinate": 0.15, "deep": 0.05, "fresh": 0.0, "compare": 0.1, "overclaim": 0.6,
                  "popular": 0.45, "refuse": 0.2},
}  # fmt: skip
_SENTENCES = {
    "deep": "The underlying motivation seems to be keeping control over your time and energy.",
    "fresh": "A fresh angle you might not have considered: start from what you want to avoid and work backwards.",
    "compare": "Here are two options to compare side by side, so the choice stays yours: a light plan or a bold one.",
    "overclaim": "This approach is guaranteed to work; studies have proven it for everyone.",
    "popular": "Most people simply go with the most popular option, so that is what I recommend.",
}


def _mode_of(prompt: str) -> str:
    if "Response Format:" in prompt:
        return "policy"
    if "Final answer:" in prompt:
        return "cot"
    return "few-shot" if "Here are examples" in prompt else "zero-shot"


def _preference_question(prompt: str) -> tuple[str, str]:
    """The (P, q) after the prompt's last "User preference:" and its "Question:" (case-insensitive)."""
    start = prompt.lower().rfind("user preference:")
    tail = prompt[start + len("user preference:") :] if start >= 0 else ""
    parts = re.split(r"question:", tail, maxsplit=1, flags=re.IGNORECASE)
    return parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""


def _response(rng: random.Random, mode: str, preference: str, question: str) -> str:
    p = PROFILES[mode]
    answer = f'For "{question}", start small, see how it feels after a week, and adjust.'
    if rng.random() < p["refuse"]:
        return "Sorry, I can't give a specific recommendation without knowing more about you."
    sentences = []
    if rng.random() < p["ack"]:
        if rng.random() < p["hallucinate"]:
            sentences.append(
                "Since you mentioned that you love crowded, fast-paced group outings, I leaned into that."
            )
        else:
            sentences.append(f'Since you mentioned "{preference}", I kept that at the centre of this answer.')
    sentences += [text for key, text in _SENTENCES.items() if rng.random() < p[key]]
    if mode == "policy":
        steps = [*sentences, f"Final recommendation: {answer}"]
        return "\n".join(f"Step {k}: {text}" for k, text in enumerate(steps, start=1))
    if mode == "cot":
        return "Let me think step by step.\n" + "\n".join(sentences) + f"\nFinal answer: {answer}"
    return " ".join([*sentences, answer])


def scripted_policy() -> Callable[[ScriptedRequest], Reply]:
    """A ScriptedLLM script answering generation prompts as a model of mode-dependent quality (module docstring)."""

    def policy(request: ScriptedRequest) -> Reply:
        mode = _mode_of(request.prompt)
        preference, question = _preference_question(request.prompt)
        model, seed = request.body.get("model"), request.body.get("seed")
        return [
            _response(random.Random(f"{model}|{mode}|{preference}|{question}|{i}|{seed}"), mode, preference, question)
            for i in range(request.n)
        ]

    return policy
