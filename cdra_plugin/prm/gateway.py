"""The Pers-GenPRM gateway without its HTTP layer: samples in, rewards and per-step results out (paper Sec. 2.3).

``Gateway`` puts the step scorer (``scoring``) behind the result cache (``cache``), applies the failure policy
(``policy``) and the reward aggregation (``reward``), and answers in OpenRLHF's remote RM protocol (``protocol``).
``server`` serves it over HTTP (``cdra prm serve``); ``offline`` runs it over a JSONL file (``cdra prm score``).

Limits (``cdra_plugin.prm.limits``), each a clear 413 naming its option, before any PRM call: ``--max-samples``
per request that scores (a ``/score`` with ``cache_only`` scores nothing and is not limited) and
``--max-response-chars`` per response; the result cache is bounded in bytes (``--cache-mb``).

Metrics: samples by outcome are counted per sample, also when a batch fails under ``fail`` (every failed sample
counts, and the 502 names them all).
"""

from __future__ import annotations

import asyncio
import time

from cdra_plugin.prm import limits
from cdra_plugin.prm.cache import ResultCache, content_key
from cdra_plugin.prm.metrics import Metrics
from cdra_plugin.prm.policy import FailurePolicy, SampleFailed, resolve
from cdra_plugin.prm.protocol import PayloadTooLarge, Sample, prefix_response, reward_response, summarize
from cdra_plugin.prm.reward import DEFAULT_REWARD_AGGREGATION, check_aggregation
from cdra_plugin.prm.scoring import SampleResult, StepScorer
from cdra_plugin.prm.step_cache import StepCache


class Gateway:
    """Scoring through the cache, the failure policy, the reward aggregation and the protocol's summaries."""

    def __init__(
        self,
        scorer: StepScorer,
        *,
        policy: FailurePolicy,
        reward_aggregation: str = DEFAULT_REWARD_AGGREGATION,
        cache_mb: float = limits.DEFAULT_CACHE_MB,
        max_samples: int = limits.DEFAULT_MAX_SAMPLES,
        max_response_chars: int = limits.DEFAULT_MAX_RESPONSE_CHARS,
        metrics: Metrics | None = None,
    ):
        if max_samples < 1 or max_response_chars < 1:
            raise ValueError("--max-samples and --max-response-chars must be >= 1")
        self.scorer = scorer
        self.policy = policy
        self.reward_aggregation = check_aggregation(reward_aggregation)
        self.max_samples = max_samples
        self.max_response_chars = max_response_chars
        self.metrics = metrics or Metrics()
        self.cache = ResultCache(int(cache_mb * (1 << 20)), SampleResult.nbytes, self.metrics)
        client = scorer.client
        self.metrics.in_flight.set_function(lambda: sum(b.in_flight for b in client.backends))
        self.metrics.cache_bytes.set_function(lambda: self.cache.nbytes)
        for backend in client.backends:  # breaker state per backend: 0 closed, 1 open or half-open (probing)
            self.metrics.backend_open.labels(backend.label).set_function(lambda b=backend: float(b.state != "closed"))
        # Everything a result depends on besides the sample itself.
        self._identity = {
            "template": content_key(template=scorer.template),
            "model": client.model,
            "format": client.prompt_format,
            "sampling": client.sampling,
            "k": scorer.k,
            "k_aggregation": scorer.k_aggregation,
            "max_steps": scorer.max_steps,
            "end_tokens": list(scorer.end_tokens),
        }
        scorer.step_cache = StepCache(int(cache_mb * (1 << 20)), self._identity, self.metrics)
        self.metrics.step_cache_bytes.set_function(lambda: scorer.step_cache.nbytes)

    @property
    def width(self) -> int:
        return self.scorer.max_steps

    def admit(self, samples: list[Sample], *, scoring: bool = True) -> None:
        """Refuse (``PayloadTooLarge``) a request over the limits (module docstring) before any PRM call."""
        if scoring and len(samples) > self.max_samples:
            raise PayloadTooLarge(
                f"{len(samples)} samples in one request exceed --max-samples {self.max_samples}; send fewer per "
                "request (OpenRLHF sends one)"
            )
        for sample in samples:
            if len(sample.response) > self.max_response_chars:
                raise PayloadTooLarge(
                    f"{sample.name}: a response of {len(sample.response)} characters exceeds --max-response-chars "
                    f"{self.max_response_chars}; raise it if the policy really writes that much"
                )

    def _key(self, sample: Sample) -> str:
        return content_key(prompt=sample.prompt, response=sample.response, label=sample.label, **self._identity)

    async def result(self, sample: Sample) -> SampleResult:
        async def compute() -> SampleResult:
            return await self.scorer.score(sample.preference, sample.question, sample.response)

        return await self.cache.get_or_compute(self._key(sample), compute, keep=lambda r: not r.failed_steps)

    async def rewards(self, samples: list[Sample]) -> dict:
        """The /get_reward answer; raises ``SampleFailed`` naming every failed sample under the ``fail`` policy."""
        self.admit(samples)
        arrived = time.perf_counter()
        results = await asyncio.gather(*(self.result(s) for s in samples))
        waited = time.perf_counter() - arrived  # since its last token: OpenRLHF posts a sample when it ends
        for _ in samples:
            self.metrics.reward_wait.observe(waited)
        summaries, failed = [], []
        for sample, result in zip(samples, results, strict=True):
            try:
                outcome = resolve(result, self.policy, sample.name)
            except SampleFailed as exc:
                failed.append(str(exc))
                continue
            self.metrics.samples.labels(outcome.status).inc()
            if result.empty:
                self.metrics.empty_responses.inc()
            summaries.append(summarize(result, outcome, self.reward_aggregation, self.width))
        if failed:
            self.metrics.samples.labels("failed").inc(len(failed))
            raise SampleFailed(f"{len(failed)} of {len(samples)} sample(s) failed: " + " | ".join(failed))
        return reward_response(summaries, self.width)

    async def score_prefix(self, samples: list[Sample]) -> dict:
        """The /score_prefix answer: the completed steps of responses still being written, scored into the step
        cache (``cdra_plugin.prm.step_cache``) for their final /get_reward. Never raises for a failed step."""
        self.admit(samples)
        results = await asyncio.gather(
            *(self.scorer.score(s.preference, s.question, s.response, prefix=True) for s in samples)
        )
        return prefix_response(results)

    async def details(self, samples: list[Sample], cache_only: bool = False) -> dict:
        """The /score answer: per-step results plus what the policy makes of each sample (never raises for it).

        ``cache_only`` answers from the cache alone (``{"outcome": "not_cached"}`` where the result is gone): how
        ``cdra-train``'s critique traces read the critiques behind rewards already given, without scoring again.
        """
        self.admit(samples, scoring=not cache_only)
        if cache_only:
            cached = [self.cache.peek(self._key(s)) for s in samples]
            return {
                "results": [
                    {"outcome": "not_cached"} if r is None else self.detail(s, r)
                    for s, r in zip(samples, cached, strict=True)
                ]
            }
        results = await asyncio.gather(*(self.result(s) for s in samples))
        return {"results": [self.detail(s, r) for s, r in zip(samples, results, strict=True)]}

    def detail(self, sample: Sample, result: SampleResult) -> dict:
        entry = result.to_json()
        try:
            outcome = resolve(result, self.policy, sample.name)
        except SampleFailed as exc:
            entry.update(reward=None, score=None, outcome="failed", error=str(exc))
            return entry
        summary = summarize(result, outcome, self.reward_aggregation, self.width)
        if outcome.step_scores is None:  # dropped: no reward (the protocol's placeholders are for /get_reward only)
            summary.update(reward=None, score=None)
        entry.update(reward=summary["reward"], score=summary["score"], outcome=outcome.status)
        entry["failures"] = outcome.failures
        return entry

    async def health(self) -> dict:
        """The /health body: every backend probed, and the settings a trainer should check."""
        backends = await self.scorer.client.health()
        ok = sum(b["ok"] for b in backends)
        return {
            "status": "ok" if ok == len(backends) else ("degraded" if ok else "down"),
            "model": self.scorer.client.model,
            "failure_policy": str(self.policy),
            "reward_aggregation": self.reward_aggregation,
            "max_steps": self.width,
            "backends": backends,
        }
