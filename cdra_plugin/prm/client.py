"""Async client for the Pers-GenPRM behind one or more OpenAI-compatible servers (vLLM, SGLang, a hosted API).

Built on ``openai.AsyncOpenAI`` (its transport, auth, timeouts and error types; the request body is sent through
its generic ``post``) with the package's own retries turned off, because the PRM needs more than it offers:

- load balancing: each call goes to the backend with the fewest calls in flight (ties in turn), a retry to another
  backend when there is one;
- a concurrency limit per backend (what one vLLM replica batches well), queued calls wait for a slot;
- a per-request timeout; retries with exponential backoff and full jitter for transient faults (connection errors,
  timeouts, 429, 5xx, an output the caller rejects, e.g. one without a parsable score); other 4xx are not retried;
- what is still failed after the retries raises ``PRMCallError`` with its kind: the caller applies its policy.

The API key is an argument (read from an environment variable by the CLI); it is sent as the bearer token only, and
redacted from every error message this module produces. Without a key the client sends "EMPTY" (vLLM's convention),
so a hosted key in ``OPENAI_API_KEY`` never leaks to a local server by accident.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import openai

# Failure kinds; the transient ones are retried.
TRANSIENT_KINDS = ("timeout", "connection", "rate_limited", "server_error", "unparsable", "bad_response")
FAILURE_KINDS = (*TRANSIENT_KINDS, "client_error")


class PRMCallError(Exception):
    """A PRM call that failed for good (after retries, or at once for a non-transient error)."""

    def __init__(self, kind: str, message: str, attempts: int):
        super().__init__(f"{kind} after {attempts} attempt(s): {message}")
        self.kind = kind
        self.attempts = attempts


@dataclass
class Completion:
    texts: list[str]
    attempts: int
    backend: str


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; rejects what is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--backend {url!r}: expected an http(s) base URL such as http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def public_url(url: str) -> str:
    """The URL without user info or query, safe to log and to use as a metrics label."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Backend:
    def __init__(self, url: str, client: openai.AsyncOpenAI):
        self.url = url
        self.label = public_url(url)
        self.client = client
        self.in_flight = 0


class PRMClient:
    """Sample ``n`` completions for a prompt from the least busy backend, with retries (see module docstring)."""

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        prompt_format: str = "chat",
        max_tokens: int = 1024,
        temperature: float = 0.0,
        top_p: float = 1.0,
        concurrency: int = 64,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        metrics=None,
    ):
        if not base_urls:
            raise ValueError("--backend: at least one base URL is needed")
        if prompt_format not in ("chat", "completion"):
            raise ValueError(f"--prompt-format must be chat or completion, got {prompt_format!r}")
        for name, value in (("--concurrency", concurrency), ("--max-tokens", max_tokens)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if timeout <= 0 or retries < 0 or backoff < 0 or backoff_max < 0:
            raise ValueError("--timeout must be > 0 and --retries/--backoff/--backoff-max >= 0")
        self.model = model
        self.prompt_format = prompt_format
        self.sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.metrics = metrics
        self._secret = api_key or None
        key = api_key or "EMPTY"
        self.backends = [
            _Backend(url, openai.AsyncOpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0))
            for url in (normalize_base_url(u) for u in base_urls)
        ]
        self._turn = itertools.count()
        self._slots: asyncio.Semaphore | None = None

    def redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _pick(self, avoid: _Backend | None) -> _Backend:
        start = next(self._turn)
        order = [self.backends[(start + i) % len(self.backends)] for i in range(len(self.backends))]
        candidates = [b for b in order if b is not avoid and b.in_flight < self.concurrency] or order
        return min(candidates, key=lambda b: b.in_flight)

    async def _request(self, backend: _Backend, prompt: str, n: int) -> list[str]:
        params = {"model": self.model, "n": n, **self.sampling}
        if self.prompt_format == "chat":
            path, params["messages"], field = "/chat/completions", [{"role": "user", "content": prompt}], "message"
        else:
            path, params["prompt"], field = "/completions", prompt, "text"
        # The client's generic POST (its documented way to send a body as is): the typed ``create`` methods walk
        # every parameter through their TypedDict transform and build pydantic models, about 1.5 ms of CPU per
        # call, which made them the gateway's bottleneck at a few hundred calls/s (scripts/bench_prm.py).
        data = await backend.client.post(path, body=params, cast_to=object)
        try:
            choices = data["choices"]
            texts = [c[field]["content"] if field == "message" else c[field] for c in choices]
        except (KeyError, TypeError, IndexError):
            raise _Rejected("bad_response", f"no choices[].{field} in the answer of {path}") from None
        if len(texts) != n or any(not isinstance(t, str) for t in texts):
            raise _Rejected("bad_response", f"expected {n} text choice(s), got {len(texts)}")
        return texts

    async def sample(
        self, prompt: str, n: int = 1, check: Callable[[list[str]], str | None] | None = None
    ) -> Completion:
        """``n`` completions of ``prompt``; ``check(texts)`` returns None to accept or a reason to retry."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency * len(self.backends))
        backend = None
        for attempt in range(self.retries + 1):
            async with self._slots:
                backend = self._pick(avoid=backend)
                backend.in_flight += 1
                started = time.perf_counter()
                try:
                    texts = await self._request(backend, prompt, n)
                    reason = check(texts) if check else None
                    if reason is not None:
                        raise _Rejected("unparsable", reason)
                    kind, message, retry_after = "ok", "", None
                except Exception as exc:  # classified below; anything unknown is re-raised
                    kind, message, retry_after = _classify(exc)
                finally:
                    backend.in_flight -= 1
                if self.metrics is not None:
                    self.metrics.observe_call(backend.label, kind, time.perf_counter() - started)
            if kind == "ok":
                return Completion(texts, attempt + 1, backend.label)
            if kind not in TRANSIENT_KINDS or attempt == self.retries:
                raise PRMCallError(kind, self.redact(f"{backend.label}: {message}"), attempt + 1)
            if self.metrics is not None:
                self.metrics.retries.inc()
            await asyncio.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable: the loop returns or raises")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = random.uniform(0.0, min(self.backoff_max, self.backoff * 2**attempt))
        return min(self.backoff_max, max(delay, retry_after or 0.0))

    async def health(self, timeout: float = 5.0) -> list[dict]:
        """One entry per backend: reachable (GET /v1/models) and serving ``model``."""
        return list(await asyncio.gather(*(self._probe(b, timeout) for b in self.backends)))

    async def _probe(self, backend: _Backend, timeout: float) -> dict:
        entry = {"backend": backend.label, "ok": False}
        try:
            page = await backend.client.with_options(timeout=timeout).models.list()
            served = [m.id for m in page.data]
        except Exception as exc:
            entry["error"] = self.redact(f"{type(exc).__name__}: {exc}")
            return entry
        entry["ok"] = self.model in served
        if not entry["ok"]:
            entry["error"] = f"model {self.model!r} is not served there (served: {served[:10]})"
        return entry

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.client.close()


class _Rejected(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _classify(exc: Exception) -> tuple[str, str, float | None]:
    """(failure kind, message, Retry-After seconds) of an exception raised by one request."""
    if isinstance(exc, _Rejected):
        return exc.kind, str(exc), None
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", "no answer within the timeout", None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", f"{type(exc).__name__}: {exc}", None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return "rate_limited", f"HTTP 429: {exc.message}", _retry_after(exc)
        if status >= 500 or status == 408:
            return "server_error", f"HTTP {status}: {exc.message}", None
        return "client_error", f"HTTP {status}: {exc.message}", None
    raise exc


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
