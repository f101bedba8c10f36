"""The persona council's Tree of Thoughts for one scenario (P, q) (paper Section 2.2, Appendix E, Figs. 11-13).

Breadth first, one level at a time:

1. Level 1: one generator call per persona (Fig. 11, first prompt): K hypotheses under the root (P, q).
2. Level d = 2..D: one generator call with ``n = b`` per node kept at level d-1 (Fig. 11, follow-up prompt on the
   path so far): b children each. A child identical to a sibling is pruned as ``duplicate`` before scoring.
3. Every new thought is scored by the evaluator as soon as it exists (Fig. 12: critique, then ``SCORE`` in
   [-1, 1]); the critique and score become the node's ``reasoning`` and ``score``. An evaluation still failed or
   unparsable after the client's retries prunes the node (``eval_failed``) and is counted by kind: no score is
   ever made up for it.
4. Pruning per level (Appendix E's heuristic pruning): a score below ``prune_below`` prunes the node; of the rest
   only the ``keep_top`` best of the whole level are expanded (ties in generation order), as in ToT's breadth-first
   search. A level where nothing survives ends the expansion early: the previous level's kept nodes are the leaves.
5. Each leaf gets a final answer (``ANSWER_TEMPLATE``). The answer is the last step of its path, so it is scored
   like every other step with Fig. 12 (it is what the PRM judges last in a policy response, Fig. 14's "Step N"), and
   the whole path holistically with Fig. 13 (0-100); both must parse or the answer is pruned (``eval_failed``).

The written tree holds exactly the root-to-answer paths whose every node is scored, so every root-to-leaf path of
the output ends in a final answer (what ``cdra data prepare`` turns into RFT targets). Everything else that was
generated is kept beside it in ``pruned_nodes`` with its reason, critique and score where it has them. A scenario
whose level 1 yields no kept hypothesis, or with no scored answer, is skipped with its reason, never half-written.

The persona of a deeper node is that of its level-1 ancestor: Fig. 11's follow-up prompt has no persona, so a
branch keeps the perspective its first hypothesis took.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cdra_plugin.cdpa.prompts import render_steps
from cdra_plugin.construct.prompts import (
    PERSONAS,
    Persona,
    Unparsable,
    answer_prompt,
    follow_up_prompt,
    hypothesis_prompt,
    node_score_prompt,
    one_line,
    parse_node_score,
    parse_path_score,
    path_score_prompt,
)
from cdra_plugin.construct.stats import STAGES, Tally
from cdra_plugin.llm.client import Completion, LLMCallError, LLMClient


@dataclass(frozen=True)
class TreeShape:
    """K personas, branching b, depth D (levels of hypotheses), and the two pruning rules (None = off)."""

    personas: tuple[Persona, ...] = PERSONAS
    branch: int = 2
    depth: int = 4
    prune_below: float | None = 0.4
    keep_top: int | None = 2

    def __post_init__(self):
        if not self.personas:
            raise ValueError("--personas: at least one persona is needed")
        if len({p.name for p in self.personas}) != len(self.personas):
            raise ValueError("--personas: names must be distinct")
        if self.branch < 1 or self.depth < 1:
            raise ValueError(f"--branch and --depth must be >= 1, got {self.branch} and {self.depth}")
        if self.prune_below is not None and not -1.0 <= self.prune_below <= 1.0:
            raise ValueError(f"--prune-below must be in [-1, 1] (Fig. 12's scale), got {self.prune_below}")
        if self.keep_top is not None and self.keep_top < 1:
            raise ValueError(f"--keep-top must be >= 1 (or 0 for no limit), got {self.keep_top}")


@dataclass(frozen=True)
class Pair:
    """One scenario to build: (P, q), its topic, where it came from, and ``key`` (a hash of P and q)."""

    key: str
    topic: str
    preference: str
    question: str
    source: dict


@dataclass(frozen=True)
class Built:
    """A scenario's outcome: ``record`` (a DeepPref record) or ``skip_reason``/``skip_message``; its counts."""

    pair: Pair
    record: dict | None
    skip_reason: str | None
    skip_message: str | None
    tally: dict


@dataclass(eq=False)
class Thought:
    """A generated node: a hypothesis or a final answer, with its evaluation or why it was pruned."""

    parent: Thought | None
    persona: Persona
    kind: str  # "hypothesis" | "answer"
    text: str
    choice: int  # index among its siblings (level 1: the persona's index)
    critique: str | None = None
    score: float | None = None
    final: tuple[str, float] | None = None  # answers: Fig. 13 (reasoning, 0-100 score)
    pruned: str | None = None  # a reason of cdra_plugin.construct.stats.PRUNE_REASONS
    failure: str | None = None  # failure kind of the evaluation that pruned it
    children: list[Thought] = field(default_factory=list)
    id: str = ""

    @property
    def depth(self) -> int:
        return 1 if self.parent is None else self.parent.depth + 1

    @property
    def label(self) -> tuple[int, ...]:
        """The choices from level 1 down to this node: a position in the tree that does not depend on timing."""
        return tuple(node.choice for node in self.lineage())

    def lineage(self) -> list[Thought]:
        """The nodes from level 1 down to this one."""
        nodes, node = [], self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def thoughts(self) -> list[str]:
        return [node.text for node in self.lineage()]


def prune_level(nodes: list[Thought], prune_below: float | None, keep_top: int | None) -> list[Thought]:
    """Mark the level's pruned nodes and return the kept ones (best first; equal scores in generation order).

    Nodes already pruned (duplicates, failed evaluations) stay pruned; the threshold applies before the top-k.
    """
    scored = [n for n in nodes if n.pruned is None]
    for node in scored:
        if prune_below is not None and node.score < prune_below:
            node.pruned = "below_threshold"
    ranked = sorted((n for n in scored if n.pruned is None), key=lambda n: -n.score)
    for node in ranked[keep_top:] if keep_top is not None else ():
        node.pruned = "not_top_k"
    return ranked[:keep_top] if keep_top is not None else ranked


def stable_seed(*parts) -> int:
    """A sampling seed from ``parts`` that is the same in every process (``hash()`` of a str is not)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big") & 0x7FFFFFFF


def _nonblank(texts: list[str]) -> str | None:
    return "a blank thought" if any(not one_line(t) for t in texts) else None


def _checker(parse: Callable[[str], tuple[str, float]]) -> Callable[[list[str]], str | None]:
    def check(texts: list[str]) -> str | None:
        try:
            parse(texts[0])
        except Unparsable as exc:
            return str(exc)
        return None

    return check


class Council:
    """Builds DeepPref trees with one generator and one evaluator client (``cdra_plugin.llm.LLMClient``).

    ``seed``: each generator call is sent a seed derived from it, the scenario and the node, so a server that
    honours seeds (vLLM, OpenAI) reproduces a build. Evaluator calls use the evaluator client's sampling (greedy
    by default).
    """

    def __init__(self, generator: LLMClient, evaluator: LLMClient, shape: TreeShape, *, seed: int | None = 0):
        self.generator = generator
        self.evaluator = evaluator
        self.shape = shape
        self.seed = seed

    async def build(self, pair: Pair) -> Built:
        return await _Job(self, pair).run()


class _Job:
    """One scenario's build: its calls, its counts, its nodes."""

    def __init__(self, council: Council, pair: Pair):
        self.council = council
        self.shape = council.shape
        self.pair = pair
        self.tally = Tally()
        self.nodes: list[Thought] = []  # every generated node

    # -- model calls ----------------------------------------------------------------------------------------------
    async def _call(self, stage: str, prompt: str, *, n: int = 1, check=None, label=()) -> Completion | str:
        """The accepted completion, or the failure kind (already counted) when the call failed after retries.

        ``label`` names the call's place in the tree (it seeds generator calls).
        """
        role = STAGES[stage]
        client = self.council.generator if role == "generator" else self.council.evaluator
        sampling = {}
        if role == "generator" and self.council.seed is not None:
            sampling["seed"] = stable_seed(self.council.seed, self.pair.key, *label)
        self.tally.add("calls", stage, "calls")
        try:
            completion = await client.sample(prompt, n=n, check=check, **sampling)
        except LLMCallError as exc:
            self.tally.add("calls", stage, "attempts", n=exc.attempts)
            self.tally.add("failures", stage, exc.kind)
            return exc.kind
        self.tally.add("calls", stage, "attempts", n=completion.attempts)
        self.tally.add("tokens", role, "prompt", n=completion.usage.prompt_tokens)
        self.tally.add("tokens", role, "completion", n=completion.usage.completion_tokens)
        return completion

    async def _score(self, node: Thought) -> None:
        """Fig. 12 on ``node`` given the path before it; a failure prunes it."""
        p = self.pair
        before = node.parent.thoughts() if node.parent else []
        prompt = node_score_prompt(p.preference, p.question, before, node.text)
        result = await self._call("node_score", prompt, check=_checker(parse_node_score))
        if isinstance(result, str):
            node.pruned, node.failure = "eval_failed", result
        else:
            node.critique, node.score = parse_node_score(result.texts[0])

    async def _score_all(self, nodes: list[Thought]) -> list[Thought]:
        await asyncio.gather(*(self._score(n) for n in nodes if n.pruned is None))
        return nodes

    # -- tree levels ----------------------------------------------------------------------------------------------
    def _add(self, parent: Thought | None, persona: Persona, kind: str, text: str, choice: int) -> Thought:
        node = Thought(parent, persona, kind, one_line(text), choice)
        self.nodes.append(node)
        self.tally.add("nodes", "generated", kind)
        if parent is not None:
            parent.children.append(node)
        return node

    @staticmethod
    def _mark_duplicates(siblings: list[Thought]) -> None:
        """Siblings with the same text (ignoring case and spacing) after the first are pruned unscored."""
        seen = set()
        for node in siblings:
            key = node.text.casefold()
            if key in seen:
                node.pruned = "duplicate"
            seen.add(key)

    async def _level_one(self) -> list[Thought]:
        """Fig. 11's first prompt once per persona; the K hypotheses are siblings under the root."""
        p = self.pair

        async def generate(index: int, persona: Persona) -> Thought | None:
            prompt = hypothesis_prompt(persona, p.preference, p.question)
            result = await self._call("thought", prompt, check=_nonblank, label=("hypothesis", index))
            return None if isinstance(result, str) else self._add(None, persona, "hypothesis", result.texts[0], index)

        generated = await asyncio.gather(*(generate(i, persona) for i, persona in enumerate(self.shape.personas)))
        level = [node for node in generated if node is not None]
        self._mark_duplicates(level)
        return await self._score_all(level)

    async def _follow_ups(self, parent: Thought) -> list[Thought]:
        """Fig. 11's follow-up prompt on the path to ``parent``, ``n = b`` completions: its children, scored."""
        p = self.pair
        prompt = follow_up_prompt(p.preference, p.question, parent.thoughts())
        result = await self._call(
            "thought", prompt, n=self.shape.branch, check=_nonblank, label=("follow_up", *parent.label)
        )
        if isinstance(result, str):
            return []
        children = [self._add(parent, parent.persona, "hypothesis", t, i) for i, t in enumerate(result.texts)]
        self._mark_duplicates(children)
        return await self._score_all(children)

    async def _answer(self, leaf: Thought) -> Thought | None:
        """The final answer after ``leaf``, scored with Fig. 12 (as a step) and Fig. 13 (the whole path)."""
        p = self.pair
        thoughts = leaf.thoughts()
        prompt = answer_prompt(p.preference, p.question, thoughts)
        result = await self._call("answer", prompt, check=_nonblank, label=("answer", *leaf.label))
        if isinstance(result, str):
            return None
        answer = self._add(leaf, leaf.persona, "answer", result.texts[0], 0)
        path_prompt = path_score_prompt(p.preference, p.question, thoughts, answer.text)
        _, final = await asyncio.gather(
            self._score(answer), self._call("path_score", path_prompt, check=_checker(parse_path_score))
        )
        if answer.pruned is not None:
            return answer
        if isinstance(final, str):
            answer.pruned, answer.failure = "eval_failed", final
        else:
            answer.final = parse_path_score(final.texts[0])
        return answer

    async def run(self) -> Built:
        shape = self.shape
        kept = prune_level(await self._level_one(), shape.prune_below, shape.keep_top)
        if not kept:
            return self._skip(*self._level_one_reason())
        for _ in range(2, shape.depth + 1):
            children = [c for cs in await asyncio.gather(*map(self._follow_ups, kept)) for c in cs]
            survivors = prune_level(children, shape.prune_below, shape.keep_top)
            if not survivors:
                self.tally.add("trees", "stopped_early")
                break
            kept = survivors
        answers = await asyncio.gather(*map(self._answer, kept))
        complete = [a for a in answers if a is not None and a.pruned is None]
        if not complete:
            return self._skip("no_answer", f"none of the {len(kept)} leaves got a final answer with both scores")
        return Built(self.pair, self._record(complete), None, None, self.tally.to_dict())

    def _level_one_reason(self) -> tuple[str, str]:
        failures, kinds = self.tally.data.get("failures", {}), Tally()
        for stage in ("thought", "node_score"):
            kinds.merge(failures.get(stage, {}))
        scored = [n for n in self.nodes if n.score is not None]
        if not scored:
            detail = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.data.items())) or "only duplicates"
            return "level1_failed", f"level 1: no persona hypothesis was generated and scored ({detail})"
        best = max(n.score for n in scored)
        return "level1_pruned", f"level 1: all {len(scored)} scored hypotheses pruned (best {best:g})"

    def _skip(self, reason: str, message: str) -> Built:
        for node in self.nodes:
            self.tally.add("nodes", "pruned", node.pruned or "dead_end")
        return Built(self.pair, None, reason, message, self.tally.to_dict())

    # -- the DeepPref record --------------------------------------------------------------------------------------
    def _record(self, answers: list[Thought]) -> dict:
        in_tree = {id(n) for a in answers for n in a.lineage()}
        for node in self.nodes:
            if id(node) not in in_tree and node.pruned is None:
                node.pruned = "dead_end"
        # Ids in breadth-first order of generation (levels in order, siblings in order), answers last: the same
        # tree gets the same ids whatever order the calls finished in.
        ordered = sorted(self.nodes, key=lambda n: (n.kind == "answer", n.depth, n.label))
        for number, node in enumerate(ordered, start=1):
            node.id = str(number)
        tree = {"0": {"thought": self.pair.question, "children": []}}
        pruned = []
        for node in ordered:
            if id(node) in in_tree:
                tree[node.id] = self._node_json(node, [c.id for c in node.children if id(c) in in_tree])
                if node.parent is None:
                    tree["0"]["children"].append(node.id)
                self.tally.add("nodes", "in_tree", node.kind)
            else:
                pruned.append(self._pruned_json(node))
                self.tally.add("nodes", "pruned", node.pruned)
        self.tally.add("paths", "complete", n=len(answers))
        return {
            "user_profile": self.pair.preference,
            "initial_question": self.pair.question,
            "thought_tree": tree,
            "response_list": [self._response_json(a) for a in sorted(answers, key=lambda a: a.label)],
            "pruned_nodes": pruned,
            "source": self.pair.source,
        }

    @staticmethod
    def _node_json(node: Thought, children: list[str]) -> dict:
        return {
            "thought": node.text,
            "reasoning": node.critique,
            "score": node.score,
            "children": children,
            "persona": node.persona.name,
            "depth": node.depth,
            "kind": node.kind,
        }

    @staticmethod
    def _pruned_json(node: Thought) -> dict:
        entry = {
            "id": node.id,
            "parent": node.parent.id if node.parent else "0",
            "depth": node.depth,
            "persona": node.persona.name,
            "kind": node.kind,
            "thought": node.text,
            "pruned": node.pruned,
        }
        if node.score is not None:
            entry.update(reasoning=node.critique, score=node.score)
        if node.failure is not None:
            entry["failure"] = node.failure
        return entry

    @staticmethod
    def _response_json(answer: Thought) -> dict:
        reasoning, score = answer.final
        return {
            "response": render_steps(answer.thoughts()).split("\n"),
            "score": int(score) if score.is_integer() else score,
            "reasoning": reasoning,
            "path": [n.id for n in answer.lineage()],
        }
