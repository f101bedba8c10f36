"""Prometheus metrics of the PRM gateway (``GET /metrics``), on a registry of their own per gateway instance.

Counters: HTTP requests by endpoint and status (``disconnected`` for a client gone before its body arrived),
PRM calls by backend and outcome, retries, steps still failed after the retries by failure kind, samples by outcome
(ok / dropped / failed / fallback), empty responses (scored -1 without a PRM call), steps the degenerate-step
guard scored -1 without a PRM call (by reason: repeated / non_letters), cache lookups (hit / miss / shared
in-flight), client connections closed to stay under --max-connections. Gauges: cache size in bytes. Histograms: PRM
call latency, sample scoring latency, HTTP request latency by endpoint. Streaming step scoring
(``cdra_plugin.prm.step_cache``): steps asked for by early and final calls and how they were found, steps early
calls scored or failed, the step cache's bytes, and the wait from a sample's last token to its reward. The PRM
client adds its backends' state (calls in flight, circuit breakers: ``cdra_plugin.llm.dispatch.BackendMetrics``).
Labels never carry secrets: backends appear as ``public_url`` (no user info, no query).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cdra_prm_http_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.request_latency = Histogram(
            "cdra_prm_http_request_seconds", "HTTP request latency", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.calls = Counter("cdra_prm_calls", "PRM calls (one per attempt)", ["backend", "outcome"], registry=r)
        self.call_latency = Histogram(
            "cdra_prm_call_seconds", "PRM call latency", ["backend"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.retries = Counter("cdra_prm_retries", "PRM call retries", registry=r)
        self.step_failures = Counter(
            "cdra_prm_step_failures", "Steps with no score after retries", ["kind"], registry=r
        )
        self.samples = Counter("cdra_prm_samples", "Scored samples by outcome", ["outcome"], registry=r)
        self.sample_latency = Histogram(
            "cdra_prm_sample_seconds", "Latency of scoring one response", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.empty_responses = Counter(
            "cdra_prm_empty_responses", "Responses with no content, scored -1 without a PRM call", registry=r
        )
        self.degenerate_steps = Counter(
            "cdra_prm_degenerate_steps",
            "Steps scored -1 without a PRM call by the degenerate-step guard",
            ["reason"],
            registry=r,
        )
        self.connections_shed = Counter(
            "cdra_prm_connections_shed",
            "Client connections closed to stay under --max-connections (idle or still sending headers)",
            registry=r,
        )
        self.cache = Counter("cdra_prm_cache_lookups", "Result cache lookups", ["result"], registry=r)
        self.cache_bytes = Gauge("cdra_prm_cache_bytes", "Estimated bytes held by the result cache", registry=r)
        # streaming step scoring (cdra_plugin.prm.step_cache, POST /score_prefix)
        self.step_lookups = Counter(
            "cdra_prm_step_lookups",
            "Steps asked for, by call (early/final) and result",
            ["call", "result"],
            registry=r,
        )
        self.early_steps = Counter(
            "cdra_prm_early_steps", "Steps an early call scored, by outcome", ["outcome"], registry=r
        )
        self.step_cache_bytes = Gauge(
            "cdra_prm_step_cache_bytes", "Estimated bytes held by the step cache", registry=r
        )
        self.reward_wait = Histogram(
            "cdra_prm_reward_wait_seconds",
            "From a sample's /get_reward arriving (its last token: OpenRLHF posts it then) to its reward",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def observe_call(self, backend: str, outcome: str, seconds: float) -> None:
        self.calls.labels(backend, outcome).inc()
        self.call_latency.labels(backend).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
