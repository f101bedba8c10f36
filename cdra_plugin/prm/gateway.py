"""The Pers-GenPRM gateway without its HTTP layer: samples in, rewards and per-step results out (paper Sec. 2.3).

``Gateway(config)`` builds what a ``GatewayConfig`` (``cdra_plugin.prm.config``) describes: the PRM client
(``cdra_plugin.llm``), the step scorer (``scoring``) behind the result cache (``cache``), and the metrics. A request
goes one way: admitted against the limits, each sample scored through the cache, then made a reward answer by
``reward`` (failure policy, aggregation, logs, carrier) and written in OpenRLHF's JSON by ``protocol``. ``server``
serves it over HTTP (``cdra prm serve``); ``offline`` runs it over a JSONL file (``cdra prm score``).

Limits, each a clear 413 naming its option, before any PRM call: ``--max-samples`` per request that scores (a
``/score`` with ``cache_only`` scores nothing and is not limited) and ``--max-response-chars`` per response; the
result cache is bounded in bytes (``--cache-mb``).

Metrics: samples by outcome are counted per sample, also when a batch fails under ``fail`` (every failed sample
counts, and the 502 names them all).
"""

from __future__ import annotations

import asyncio
import time

from cdra_plugin.llm.client import connect
from cdra_plugin.prm.cache import ResultCache, content_key
from cdra_plugin.prm.config import GatewayConfig
from cdra_plugin.prm.metrics import Metrics
from cdra_plugin.prm.protocol import PayloadTooLarge, Sample, prefix_response, reward_response
from cdra_plugin.prm.reward import Outcome, SampleFailed, log_keys, resolve, summarize
from cdra_plugin.prm.scoring import SampleResult, StepScorer
from cdra_plugin.prm.step_cache import StepCache


class Gateway:
    """Scoring through the cache, then the reward answer (see module docstring); ``config`` says how."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.metrics = Metrics()
        client = connect(config.backend, config.model, "--backend", **config.client_kwargs, metrics=self.metrics)
        # Everything a result depends on besides the sample itself.
        self._identity = {
            "template": content_key(template=config.prompt_template),
            "model": client.model,
            "format": client.prompt_format,
            "sampling": client.sampling,
            "k": config.k,
            "k_aggregation": config.k_aggregation,
            "max_steps": config.max_steps,
            "end_tokens": list(config.end_tokens),
            "degenerate_guard": config.degenerate_guard,
        }
        cache_bytes = int(config.cache_mb * (1 << 20))
        # single steps scored early by the streaming executor, kept for the final /get_reward
        step_cache = StepCache(cache_bytes, self._identity, self.metrics)
        self.scorer = StepScorer(
            client,
            template=config.prompt_template,
            k=config.k,
            k_aggregation=config.k_aggregation,
            max_steps=config.max_steps,
            end_tokens=config.end_tokens,
            degenerate_guard=config.degenerate_guard,
            step_cache=step_cache,
            metrics=self.metrics,
        )
        self.cache = ResultCache(cache_bytes, SampleResult.nbytes, self.metrics)
        client.register_metrics(self.metrics.registry, "cdra_prm")  # calls in flight, each backend's breaker state
        self.metrics.cache_bytes.set_function(lambda: self.cache.nbytes)
        self.metrics.step_cache_bytes.set_function(lambda: step_cache.nbytes)

    @property
    def width(self) -> int:
        return self.config.max_steps

    def admit(self, samples: list[Sample], *, scoring: bool = True) -> None:
        """Refuse (``PayloadTooLarge``) a request over the limits (module docstring) before any PRM call."""
        limit = self.config.max_response_chars
        if scoring and len(samples) > self.config.max_samples:
            raise PayloadTooLarge(
                f"{len(samples)} samples in one request exceed --max-samples {self.config.max_samples}; send fewer "
                "per request (OpenRLHF sends one)"
            )
        for sample in samples:
            if len(sample.response) > limit:
                raise PayloadTooLarge(
                    f"{sample.name}: a response of {len(sample.response)} characters exceeds --max-response-chars "
                    f"{limit}; raise it if the policy really writes that much"
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
                outcome, summary = self._answer(sample, result)
            except SampleFailed as exc:
                failed.append(str(exc))
                continue
            self.metrics.samples.labels(outcome.status).inc()
            if result.empty:
                self.metrics.empty_responses.inc()
            summaries.append(summary)
        if failed:
            self.metrics.samples.labels("failed").inc(len(failed))
            raise SampleFailed(f"{len(failed)} of {len(samples)} sample(s) failed: " + " | ".join(failed))
        return reward_response(summaries, log_keys(self.width))

    async def score_prefix(self, samples: list[Sample]) -> dict:
        """The /score_prefix answer: the completed steps of responses still being written, scored into the step
        cache (``cdra_plugin.prm.step_cache``) for their final /get_reward. Never raises for a failed step."""
        self.admit(samples)
        results = await asyncio.gather(
            *(self.scorer.score(s.preference, s.question, s.response, prefix=True) for s in samples)
        )
        return prefix_response([[step.score for step in r.steps] for r in results])

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
            outcome, summary = self._answer(sample, result)
        except SampleFailed as exc:
            entry.update(reward=None, score=None, outcome="failed", error=str(exc))
            return entry
        if outcome.step_scores is None:  # dropped: no reward (the protocol's placeholders are for /get_reward only)
            summary.update(reward=None, score=None)
        entry.update(reward=summary["reward"], score=summary["score"], outcome=outcome.status)
        entry["failures"] = outcome.failures
        return entry

    def _answer(self, sample: Sample, result: SampleResult) -> tuple[Outcome, dict]:
        """What the failure policy makes of ``result`` and its reward summary; ``SampleFailed`` under ``fail``."""
        outcome = resolve(result, self.config.policy, sample.name)
        return outcome, summarize(result, outcome, self.config.reward_aggregation, self.width)

    async def health(self) -> dict:
        """The /health body: every backend probed, and the settings a trainer should check."""
        backends = await self.scorer.client.health()
        ok = sum(b["ok"] for b in backends)
        return {
            "status": "ok" if ok == len(backends) else ("degraded" if ok else "down"),
            "model": self.scorer.client.model,
            "failure_policy": str(self.config.policy),
            "reward_aggregation": self.config.reward_aggregation,
            "max_steps": self.width,
            "backends": backends,
        }
