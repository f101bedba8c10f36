"""The Pers-GenPRM gateway: OpenRLHF's remote reward model, scoring each response step by step (paper Sec. 2.3).

Endpoints (FastAPI; run with ``cdra prm serve``):

- ``POST /get_reward``: OpenRLHF's remote RM protocol (``cdra_plugin.prm.protocol``), so
  ``--reward.remote_url http://HOST:PORT/get_reward`` works with any OpenRLHF estimator; the step scores reach the
  CDPA experience maker through the ``extra_logs`` carrier (``cdra_plugin.carrier``).
- ``POST /score``: the full per-step result (step spans, texts, critiques, scores, failures, latency).
- ``GET /health``: probes every backend (``GET /v1/models``); 200 when at least one serves the model, else 503.
- ``GET /metrics``: Prometheus text (``cdra_plugin.prm.metrics``).

Unlike OpenRLHF's ``serve_rm`` (one forward pass of a scalar RM per query), a sample here costs one PRM generation
per step; results are cached by content (``cdra_plugin.prm.cache``) so no pair is scored twice. Bad input gets a
4xx naming the field (413 past ``--max-body-mb``); with ``--auth-token-env`` every endpoint wants
``Authorization: Bearer <token>`` (or HTTP basic auth with the token as password, which is what OpenRLHF's client
sends for ``http://user:TOKEN@host:port/get_reward``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cdra_plugin.prm.cache import ResultCache, content_key
from cdra_plugin.prm.metrics import CONTENT_TYPE, Metrics
from cdra_plugin.prm.policy import FailurePolicy, SampleFailed, resolve
from cdra_plugin.prm.protocol import (
    BadRequest,
    Sample,
    parse_cache_only,
    parse_reward_request,
    parse_score_request,
    reward_response,
    summarize,
)
from cdra_plugin.prm.scoring import SampleResult, StepScorer

logger = logging.getLogger("cdra.prm")


class PayloadTooLarge(Exception):
    pass


class Gateway:
    """Scoring through the cache, the failure policy, and the protocol's summaries."""

    def __init__(
        self,
        scorer: StepScorer,
        *,
        policy: FailurePolicy,
        reward_aggregation: str = "sum",
        cache_size: int = 16384,
        metrics: Metrics | None = None,
    ):
        if reward_aggregation not in ("sum", "mean"):
            raise ValueError(f"--reward-aggregation must be sum or mean, got {reward_aggregation!r}")
        self.scorer = scorer
        self.policy = policy
        self.reward_aggregation = reward_aggregation
        self.metrics = metrics or Metrics()
        self.cache = ResultCache(cache_size, self.metrics)
        client = scorer.client
        self.metrics.in_flight.set_function(lambda: sum(b.in_flight for b in client.backends))
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

    @property
    def width(self) -> int:
        return self.scorer.max_steps

    def _key(self, sample: Sample) -> str:
        return content_key(prompt=sample.prompt, response=sample.response, label=sample.label, **self._identity)

    async def result(self, sample: Sample) -> SampleResult:
        async def compute() -> SampleResult:
            return await self.scorer.score(sample.preference, sample.question, sample.response)

        return await self.cache.get_or_compute(self._key(sample), compute, keep=lambda r: not r.failed_steps)

    async def rewards(self, samples: list[Sample]) -> dict:
        """The /get_reward answer; raises ``SampleFailed`` under the ``fail`` policy."""
        results = await asyncio.gather(*(self.result(s) for s in samples))
        summaries = []
        for sample, result in zip(samples, results, strict=True):
            try:
                outcome = resolve(result, self.policy, sample.name)
            except SampleFailed:
                self.metrics.samples.labels("failed").inc()
                raise
            self.metrics.samples.labels(outcome.status).inc()
            summaries.append(summarize(result, outcome, self.reward_aggregation, self.width))
        return reward_response(summaries, self.width)

    async def details(self, samples: list[Sample], cache_only: bool = False) -> dict:
        """The /score answer: per-step results plus what the policy makes of each sample (never raises for it).

        ``cache_only`` answers from the cache alone (``{"outcome": "not_cached"}`` where the result is gone): how
        ``cdra-train``'s critique traces read the critiques behind rewards already given, without scoring again.
        """
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


def _authorized(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            password = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except ValueError:
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} (--max-body-mb)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes (--max-body-mb)")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc})") from None


def create_app(gateway: Gateway, *, auth_token: str | None = None, max_body_bytes: int = 16 << 20) -> FastAPI:
    """The FastAPI app serving ``gateway`` (see module docstring)."""
    metrics = gateway.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await gateway.scorer.client.aclose()

    app = FastAPI(title="cdra Pers-GenPRM gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    async def handle(endpoint: str, request: Request, work) -> Response:
        started = time.perf_counter()
        try:
            if auth_token is not None and not _authorized(request.headers.get("authorization"), auth_token):
                response = JSONResponse(
                    {"detail": "missing or wrong bearer token"}, 401, {"WWW-Authenticate": "Bearer"}
                )
            else:
                response = await work()
        except BadRequest as exc:
            response = JSONResponse({"detail": str(exc)}, 400)
        except PayloadTooLarge as exc:
            response = JSONResponse({"detail": str(exc)}, 413)
        except SampleFailed as exc:
            logger.warning("%s", exc)
            response = JSONResponse({"detail": str(exc)}, 502)
        except Exception as exc:  # a bug: answer and keep serving
            logger.exception("%s failed", endpoint)
            response = JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.request_latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Response:
        async def work():
            samples = parse_reward_request(await _read_json(request, max_body_bytes))
            return JSONResponse(await gateway.rewards(samples))

        return await handle("get_reward", request, work)

    @app.post("/score")
    async def score(request: Request) -> Response:
        async def work():
            body = await _read_json(request, max_body_bytes)
            samples = parse_score_request(body)
            return JSONResponse(await gateway.details(samples, cache_only=parse_cache_only(body)))

        return await handle("score", request, work)

    @app.get("/health")
    async def health(request: Request) -> Response:
        async def work():
            backends = await gateway.scorer.client.health()
            ok = sum(b["ok"] for b in backends)
            status = "ok" if ok == len(backends) else ("degraded" if ok else "down")
            body = {
                "status": status,
                "model": gateway.scorer.client.model,
                "failure_policy": str(gateway.policy),
                "max_steps": gateway.width,
                "backends": backends,
            }
            return JSONResponse(body, 200 if ok else 503)

        return await handle("health", request, work)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        async def work():
            return Response(metrics.render(), media_type=CONTENT_TYPE)

        return await handle("metrics", request, work)

    return app
