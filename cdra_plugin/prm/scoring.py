"""Step-wise scoring of one response with the Pers-GenPRM (paper Sec. 2.3, Eq. 1; Appendix D's sampled critiques).

For a response with steps s^1..s^T (``cdra_plugin.cdpa.steps.segment_steps``, at most ``max_steps`` of them), step j is
judged from the Fig. 15 prompt filled with (P, q, tau<=j): steps 1..j-1 as context, step j as the one to judge
(``cdra_plugin.cdpa.prompts.prm_prompt``: the policy's text quoted, chat-template tokens neutralised). The T prompts
are sent concurrently; each asks for ``k`` critiques (default 1, greedy) whose scores (``parse_score``: the final
line's plain number in [-1, 1], nothing else) are aggregated by mean or median. An output without such a score is
rejected and retried like a transient fault, at the client's retry temperature (> 0) when sampling is greedy; with
k > 1 the step needs at least one parsable critique, the unparsable ones are listed as ``None`` in
``sample_scores``. A step with no score after the retries keeps ``score=None`` and its failure kind: what that means
for the sample is the caller's failure policy (``cdra_plugin.prm.reward``), never a default value here.

A response with no content (nothing but blanks, end-of-sequence tokens and step markers) is not sent to the PRM:
each of its steps gets ``EMPTY_SCORE`` = -1.0, the bottom of the Fig. 15 scale, and the result is marked ``empty``
(counted by the gateway: ``prm_empty`` in extra_logs, ``cdra_prm_empty_responses_total``). Judging it would cost a
PRM call per step and invite the PRM to be lenient with a non-answer. With the degenerate-step guard on (the
default), so is a step that repeats an earlier one or is mostly not letters or digits
(``cdra_plugin.prm.content.degenerate_steps``): it gets ``EMPTY_SCORE`` and its ``degenerate`` reason, counted in
``cdra_prm_degenerate_steps_total``.

Every step's PRM call goes through the gateway's step cache (``cdra_plugin.prm.step_cache``) when it has one, so a
step already scored for a response with the same (P, q, steps 1..j) is not sent again; ``score(..., prefix=True)``
scores the completed steps of a response still being generated (``POST /score_prefix``: the streaming executor's
early calls).

Trailing end-of-sequence tokens (OpenRLHF decodes the response with ``skip_special_tokens=False``) are removed
before segmenting, so the PRM never sees ``<|im_end|>`` as text; this only shortens the last step, so the step
count agrees with a trainer that segments the undecoded text.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from cdra_plugin.cdpa.prompts import (
    DEFAULT_END_TOKENS,
    PRM_TEMPLATE,
    SCORE_MIN,
    final_line,
    parse_score,
    prm_prompt,
    strip_end_tokens,
)
from cdra_plugin.cdpa.steps import completed_steps, segment_steps
from cdra_plugin.llm.client import LLMCallError, LLMClient
from cdra_plugin.prm.content import degenerate_steps

EMPTY_SCORE = SCORE_MIN  # what a response with no content gets, without a PRM call


@dataclass
class StepResult:
    index: int
    start: int  # character span of the step in the response
    end: int
    text: str  # the step's content without its marker
    critiques: list[str]
    sample_scores: list[float | None]  # one per critique; None = unparsable
    score: float | None  # aggregated; None = failed (see failure)
    failure: str | None = None  # failure kind (cdra_plugin.llm.FAILURE_KINDS)
    error: str | None = None
    attempts: int = 0
    latency_s: float = 0.0
    backend: str | None = None  # the server that gave the accepted answer
    degenerate: str | None = None  # "repeated" | "non_letters": scored EMPTY_SCORE by the guard, no PRM call


@dataclass
class SampleResult:
    steps: list[StepResult]
    latency_s: float
    empty: bool = False  # no content: scored EMPTY_SCORE without a PRM call

    @property
    def failed_steps(self) -> list[StepResult]:
        return [s for s in self.steps if s.score is None]

    def to_json(self) -> dict:
        steps = [asdict(s) for s in self.steps]
        return {"num_steps": len(self.steps), "empty": self.empty, "latency_s": self.latency_s, "steps": steps}

    def nbytes(self) -> int:
        """Approximate memory held by this result (its texts dominate), for the byte-bounded cache."""
        texts = [t for s in self.steps for t in (s.text, *s.critiques, s.error or "")]
        return 256 + sum(400 + 16 * len(s.sample_scores) for s in self.steps) + sum(sys.getsizeof(t) for t in texts)


class StepScorer:
    """Score responses step by step through a ``LLMClient`` (see module docstring; options checked by
    ``cdra_plugin.prm.config.GatewayConfig``)."""

    def __init__(
        self,
        client: LLMClient,
        *,
        template: str = PRM_TEMPLATE,
        k: int = 1,
        k_aggregation: str = "mean",
        max_steps: int = 32,
        end_tokens=DEFAULT_END_TOKENS,
        degenerate_guard: bool = True,
        step_cache=None,
        metrics=None,
    ):
        self.client = client
        self.template = template
        self.k = k
        self.k_aggregation = k_aggregation
        self.max_steps = max_steps
        self.end_tokens = tuple(end_tokens)
        self.degenerate_guard = degenerate_guard
        self.step_cache = (
            step_cache  # a ``cdra_plugin.prm.step_cache.StepCache``: every step's PRM call goes through it
        )
        self.metrics = metrics

    def step_prompts(
        self, preference: str, question: str, response: str, *, prefix: bool = False
    ) -> list[tuple[object, str, str]]:
        """``(Step, step text, PRM prompt)`` for each step of ``response`` (Eq. 1 inputs); with ``prefix``, of a
        response still being written, for its completed steps only (``cdra_plugin.cdpa.steps.completed_steps``)."""
        text = strip_end_tokens(response, self.end_tokens)
        steps = (completed_steps if prefix else segment_steps)(text, max_steps=self.max_steps)
        bodies = [s.body(text) for s in steps]
        return [
            (step, bodies[j], prm_prompt(preference, question, bodies[: j + 1], template=self.template))
            for j, step in enumerate(steps)
        ]

    async def score(self, preference: str, question: str, response: str, *, prefix: bool = False) -> SampleResult:
        """The steps of ``response`` scored; with ``prefix`` (``/score_prefix``) only the completed steps of a response
        still being written, into the step cache, uncounted (its final call counts what the sample gets)."""
        started = time.perf_counter()
        triples = self.step_prompts(preference, question, response, prefix=prefix)
        if not prefix and not any(text for _, text, _ in triples):
            steps = [_empty_step(step) for step, _, _ in triples]
            return SampleResult(steps, time.perf_counter() - started, empty=True)
        # The steps share their prompt's prefix (P, q, earlier steps): one replica's prefix cache serves them all when
        # it is not overloaded; keyed by the first step, so a response's early and final calls meet there too. The
        # arrival time keeps responses first come first served, retries included.
        first = triples[0][1] if triples else ""
        key = hashlib.blake2b("\0".join((preference, question, first)).encode(), digest_size=8).hexdigest()
        order = {"affinity": key, "priority": time.monotonic()}
        texts = [text for _, text, _ in triples]
        skipped = degenerate_steps(texts) if self.degenerate_guard else [None] * len(texts)
        judged = [j for j, why in enumerate(skipped) if not why]
        keys = self.step_cache.keys(preference, question, texts) if self.step_cache is not None else None
        scored = iter(await asyncio.gather(
            *(self._step(keys and keys[j], triples[j][0], texts[j], triples[j][2], order, prefix) for j in judged)
        ))  # fmt: skip
        steps = [next(scored) if why is None else _empty_step(step, text, why)
                 for (step, text, _), why in zip(triples, skipped, strict=True)]  # fmt: skip
        result = SampleResult(steps, time.perf_counter() - started)
        if self.metrics is not None and not prefix:
            self.metrics.sample_latency.observe(result.latency_s)
            for step in result.steps:
                if step.failure:
                    self.metrics.step_failures.labels(step.failure).inc()
                if step.degenerate:
                    self.metrics.degenerate_steps.labels(step.degenerate).inc()
        return result

    async def _step(self, key: str | None, step, text: str, prompt: str, order: dict, early: bool) -> StepResult:
        """Step ``step`` through the step cache (under ``key``) when the gateway has one."""
        compute = functools.partial(self._score_step, step, text, prompt, order)
        if self.step_cache is None:
            return await compute()
        return await self.step_cache.result(key, step, compute, early=early)

    async def _score_step(self, step, text: str, prompt: str, order: dict) -> StepResult:
        started = time.perf_counter()
        base = {"index": step.index, "start": step.start, "end": step.end, "text": text}
        try:
            completion = await self.client.sample(prompt, n=self.k, check=needs_a_score, **order)
        except LLMCallError as exc:
            return StepResult(
                **base, critiques=[], sample_scores=[], score=None, failure=exc.kind, error=str(exc),
                attempts=exc.attempts, latency_s=time.perf_counter() - started,
            )  # fmt: skip
        scores = [parse_score(t) for t in completion.texts]
        valid = [s for s in scores if s is not None]
        agg = statistics.fmean(valid) if self.k_aggregation == "mean" else statistics.median(valid)
        return StepResult(
            **base, critiques=completion.texts, sample_scores=scores, score=float(agg),
            attempts=completion.attempts, latency_s=time.perf_counter() - started, backend=completion.backend,
        )  # fmt: skip


def _empty_step(step, text: str = "", degenerate: str | None = None) -> StepResult:
    return StepResult(step.index, step.start, step.end, text, [], [], EMPTY_SCORE, degenerate=degenerate)


def needs_a_score(texts: list[str]) -> str | None:
    """The client's check: None when at least one output has a score (``parse_score``), else why not."""
    if any(parse_score(t) is not None for t in texts):
        return None
    last = final_line(texts[0]) if texts else ""
    shown = repr(last[:80] + ("..." if len(last) > 80 else ""))
    return f"the PRM's final line {shown} is not 'SCORE: <plain number in [-1, 1]>'" + (
        f" (nor in the other {len(texts) - 1} outputs)" if len(texts) > 1 else ""
    )
