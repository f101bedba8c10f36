"""A scripted persona council: rule-based, deterministic answers to the DeepPref construction prompts (Figs. 11-13).

It is a ``script`` for :class:`~cdra_plugin.stub.ScriptedLLM`, so ``cdra build`` talks to it over HTTP through the
same client as to vLLM: one server can play both the generator and the evaluator. It recognises each prompt by the
figure's own wording (it never imports the builder's templates, as a real model would not):

- Fig. 11, first step: ``[<Persona>] <hypothesis>``; follow-up with ``n`` choices: ``[<Persona> <label>.<c>] ...``
  for c = 1..n, where ``<label>`` names the parent, so every thought says where it sits in the tree;
- the final-answer prompt: ``[<Persona> <label> answer] ...``;
- Fig. 12: a critique naming the scale's band, then ``SCORE: <s>`` with s from the thought's tag:
  s = base(persona) + sum over the follow-up choices c of (+0.05 if c == 1 else -0.15 (c - 1)), an answer
  +0.04 over its last step, rounded to 2 places and clipped to [-1, 1]. Bases: Psychologist 0.81, Sociologist
  0.62, Pragmatist 0.55, Pedagogue 0.47, Contrarian 0.28, other personas ``default``;
- Fig. 13: ``FINAL SCORE: round(60 + 30 * mean of the path's Fig. 12 scores)``.

So with the default tree (K = 5, b = 2, D = 4, --prune-below 0.4, --keep-top 2) the Contrarian is pruned below the
threshold at level 1, Pragmatist and Pedagogue fall outside the top 2, and every tree is the same two paths.

Faults are written into the preference P (it appears in every prompt of a scenario):
``[council: STAGE WHO=FAULT]`` with STAGE ``hypothesis``, ``follow_up``, ``answer``, ``node`` (Fig. 12) or
``path`` (Fig. 13); WHO a persona's short name (``Contrarian``) or ``all``; FAULT ``unparsable`` (an evaluator
answer without a valid score line, a blank generator answer), ``out_of_range`` (SCORE 1.5 / FINAL SCORE 140),
``flaky`` (unparsable on the first request of that prompt only), ``http500``, ``http400`` or ``hang`` (no answer
for 30 s). Unrecognised prompts, and prompts with a tag whose stage or fault is not one of these, get HTTP 400.

    python -m cdra_plugin.stub serve council --role council --port 8001
"""

from __future__ import annotations

import re
import threading
from collections import Counter

from cdra_plugin.stub.server import Fault, Reply, ScriptedRequest

BASE_SCORES = {"Psychologist": 0.81, "Sociologist": 0.62, "Pragmatist": 0.55, "Pedagogue": 0.47, "Contrarian": 0.28}
STAGES = ("hypothesis", "follow_up", "answer", "node", "path")
FAULTS = ("unparsable", "out_of_range", "flaky", "http500", "http400", "hang")

_FAULT_TAG = re.compile(r"\[council: (\w+) (\w+)=(\w+)\]")
_THOUGHT_TAG = re.compile(r"\[([A-Za-z][\w-]*)((?: [\d.]+)?)( answer)?\]")
_STEP_TAG = re.compile(r"^Step \d+: " + _THOUGHT_TAG.pattern, re.MULTILINE)
_PREFERENCE = re.compile(r'User Preference: "(.*?)" (?:Initial|Current)', re.DOTALL)
_PERSONA = re.compile(r"playing the role of (?:The )?([A-Za-z][\w-]*)")
_NEW_THOUGHT = re.compile(r'New Thought to Evaluate \(A hypothesis about an implicit preference\): "(.*)"', re.DOTALL)
_BANDS = (  # Fig. 12's scale, lowest score of each band
    (1.0, "a revolutionary insight"),
    (0.9, "an exceptional inference"),
    (0.7, "a strong, differentiated inference"),
    (0.4, "a surface-level inference"),
    (0.1, "no real inference"),
    (0.0, "irrelevant"),
    (-0.39, "a flawed inference"),
    (-0.69, "a misaligned inference"),
    (-1.0, "a contradictory inference"),
)


class ScriptedCouncil:
    """``script(request) -> reply`` for a ScriptedLLM playing the council's generator and evaluator."""

    def __init__(self, base_scores: dict[str, float] | None = None, default: float = 0.5):
        self.base_scores = {**BASE_SCORES, **(base_scores or {})}
        self.default = default
        self._seen: Counter[str] = Counter()  # requests per prompt, for "flaky"
        self._lock = threading.Lock()

    def __call__(self, request: ScriptedRequest) -> Reply:
        prompt = request.prompt
        if "Your task is to generate a single hypothesis" in prompt:
            return self._hypothesis(request)
        if "Your task is to expand upon a given line of thought" in prompt:
            return self._follow_up(request)
        if "provide your final, actionable answer" in prompt:
            return self._answer(request)
        if 'Your task is to assign a precise score to a "New Thought"' in prompt:
            return self._node_score(request)
        if "You are the Chief Review Officer" in prompt:
            return self._path_score(request)
        return Fault.http(400, "the scripted council does not recognise this prompt")

    # -- scores ---------------------------------------------------------------------------------------------------
    def score(self, persona: str, label: str, answer: bool = False) -> float:
        """The Fig. 12 score of the thought tagged ``[persona label]`` (see the module docstring)."""
        value = self.base_scores.get(persona, self.default)
        for choice in (int(c) for c in label.split(".")[1:] if c):
            value += 0.05 if choice == 1 else -0.15 * (choice - 1)
        value += 0.04 if answer else 0.0
        return max(-1.0, min(1.0, round(value, 2)))

    # -- prompts --------------------------------------------------------------------------------------------------
    def _fault(self, request: ScriptedRequest, stage: str, persona: str) -> str | None:
        """The fault the prompt's tags give this call: one of FAULTS, None, or a malformed tag (answered 400)."""
        for tag_stage, who, fault in _FAULT_TAG.findall(request.prompt):
            if tag_stage not in STAGES or fault not in FAULTS:  # a typo must not pass for a healthy answer
                return f"[council: {tag_stage} {who}={fault}]"
            if tag_stage == stage and who in ("all", persona):
                if fault == "flaky":
                    with self._lock:
                        self._seen[request.prompt] += 1
                        if self._seen[request.prompt] > 1:
                            continue
                    return "unparsable"
                return fault
        return None

    @staticmethod
    def _as_reply(fault: str | None, text: Reply, bad: Reply, out_of_range: Reply) -> Reply:
        if fault is not None and fault not in FAULTS:
            return Fault.http(
                400, f"malformed fault tag {fault}: stages {', '.join(STAGES)}; faults {', '.join(FAULTS)}"
            )
        if fault == "http500":
            return Fault.http(500)
        if fault == "http400":
            return Fault.http(400)
        if fault == "hang":
            return Fault.hang(30.0)
        if fault == "unparsable":
            return bad
        return out_of_range if fault == "out_of_range" else text

    @staticmethod
    def _preference(prompt: str) -> str:
        match = _PREFERENCE.search(prompt)
        text = _FAULT_TAG.sub("", match.group(1)) if match else "their preference"
        return " ".join(text.split())[:60]

    @staticmethod
    def _last_step(text: str) -> tuple[str, str]:
        """(persona, label) of the last ``Step k: [tag]`` line of a path; a level-1 hypothesis has label "1"."""
        tags = _STEP_TAG.findall(text)
        if not tags:
            return "Unknown", "1"
        persona, label, _ = tags[-1]
        return persona, label.strip() or "1"

    def _hypothesis(self, request: ScriptedRequest) -> Reply:
        match = _PERSONA.search(request.prompt)
        persona = match.group(1) if match else "Unknown"
        preference = self._preference(request.prompt)
        text = (
            f"[{persona}] Someone who says '{preference}' is, from the {persona.lower()}'s angle, protecting "
            f"something they value more than the request itself."
        )
        return self._as_reply(self._fault(request, "hypothesis", persona), text, " ", text)

    def _follow_up(self, request: ScriptedRequest) -> Reply:
        persona, label = self._last_step(request.prompt)
        texts = [
            f"[{persona} {label}.{c}] Building on that, they probably also want option {c} of a deeper need: "
            f"control over how the {persona.lower()}'s concern plays out."
            for c in range(1, request.n + 1)
        ]
        return self._as_reply(self._fault(request, "follow_up", persona), texts, [" "] * request.n, texts)

    def _answer(self, request: ScriptedRequest) -> Reply:
        persona, label = self._last_step(request.prompt)
        text = (
            f"[{persona} {label} answer] Here is a plan that respects '{self._preference(request.prompt)}' and the "
            f"needs found along the {persona.lower()}'s path: three concrete options, each with what to avoid."
        )
        return self._as_reply(self._fault(request, "answer", persona), text, " ", text)

    def _node_score(self, request: ScriptedRequest) -> Reply:
        match = _NEW_THOUGHT.search(request.prompt)
        tags = _THOUGHT_TAG.findall(match.group(1) if match else "")
        persona, label, answer = tags[0] if tags else ("Unknown", "", "")
        score = self.score(persona, label.strip(), bool(answer))
        band = next(name for low, name in _BANDS if score >= low)
        where = f"{persona} {label.strip()}".strip() + (" answer" if answer else "")
        text = f"Reasoning: The thought [{where}] is {band} from the stated preference.\nSCORE: {score:g}"
        bad, out = "Reasoning: I could not settle on a score.", "Reasoning: Off the scale.\nSCORE: 1.5"
        return self._as_reply(self._fault(request, "node", persona), text, bad, out)

    def _path_score(self, request: ScriptedRequest) -> Reply:
        tags = _STEP_TAG.findall(request.prompt)
        scores = [self.score(p, label.strip()) for p, label, _ in tags] or [self.default]
        persona = tags[0][0] if tags else "Unknown"
        final = round(60 + 30 * sum(scores) / len(scores))
        text = (
            f"Holistic Reasoning: the {persona.lower()}'s path builds step by step on the stated preference and "
            f"ends in a concrete answer.\nFINAL SCORE: {final}"
        )
        bad, out = "Holistic Reasoning: a fine path.", "Holistic Reasoning: Off the scale.\nFINAL SCORE: 140"
        return self._as_reply(self._fault(request, "path", persona), text, bad, out)
