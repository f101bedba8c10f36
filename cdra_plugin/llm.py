"""The project's one async LLM client: the PRM gateway, the LLM judge and the DeepPref builder all use it.

Each of them sends prompts to models behind one or more OpenAI-compatible servers (vLLM, SGLang, a hosted API).
``LLMClient`` is built on ``openai.AsyncOpenAI`` (its transport, auth, timeouts and error types; the body is sent
through its generic ``post``) with the package's own retries turned off, and adds what a training run needs:

- load balancing: each call goes to the backend with the fewest calls in flight (ties in turn), a retry to another
  backend when there is one;
- a concurrency limit per backend (what one vLLM replica batches well); queued calls wait for a slot;
- a per-request timeout; retries with exponential backoff and full jitter for transient faults (connection errors,
  timeouts, 429, 5xx, an answer the caller rejects, e.g. one without a parsable score); other 4xx are not retried;
- a retry after a rejected answer samples at ``retry_temperature`` when the configured temperature is 0: a greedy
  model asked the same question again would give the same rejected answer;
- what is still failed after the retries raises ``LLMCallError`` with its kind: the caller applies its policy;
- token usage (``usage`` of the server's answer) on every ``Completion``, for cost reports.

The API key is an argument (read from an environment variable by the CLIs); it is sent as the bearer token only,
and redacted from every error message this module produces. Without a key the client sends "EMPTY" (vLLM's
convention), so a hosted key in ``OPENAI_API_KEY`` never leaks to a local server by accident.

    client = LLMClient(["http://127.0.0.1:8000/v1"], "pers-genprm", temperature=0.0)
    completion = await client.sample(prompt, n=1, check=lambda texts: None if ok(texts) else "why not")
    completion.texts, completion.usage.completion_tokens
    await client.aclose()
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
PROMPT_FORMATS = ("chat", "completion")


class LLMCallError(Exception):
    """A call that failed for good (after retries, or at once for a non-transient error)."""

    def __init__(self, kind: str, message: str, attempts: int):
        super().__init__(f"{kind} after {attempts} attempt(s): {message}")
        self.kind = kind
        self.attempts = attempts


@dataclass(frozen=True)
class Usage:
    """Tokens of the accepted answer as the server counted them (0 when it reports none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    texts: list[str]
    attempts: int
    backend: str
    usage: Usage = Usage()


def normalize_base_url(url: str, option: str = "--backend") -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; rejects what is not an http(s) URL, naming ``option``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{option} {url!r}: expected an http(s) base URL such as http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def split_urls(value: str, option: str = "--backend") -> list[str]:
    """A comma-separated option value as a list of base URLs (at least one)."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError(f"{option}: at least one base URL is needed")
    return urls


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


class LLMClient:
    """Sample ``n`` completions for a prompt from the least busy backend, with retries (see module docstring).

    ``metrics``: optional, with ``observe_call(backend_label, outcome_kind, seconds)`` and a ``retries`` counter
    (``cdra_plugin.prm.metrics.Metrics`` has both).
    """

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
        retry_temperature: float = 0.7,
        concurrency: int = 64,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        metrics=None,
    ):
        if not base_urls:
            raise ValueError("--backend: at least one base URL is needed")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"--prompt-format must be chat or completion, got {prompt_format!r}")
        for name, value in (("--concurrency", concurrency), ("--max-tokens", max_tokens)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if timeout <= 0 or retries < 0 or backoff < 0 or backoff_max < 0:
            raise ValueError("--timeout must be > 0 and --retries/--backoff/--backoff-max >= 0")
        if temperature < 0 or retry_temperature <= 0:
            raise ValueError("--temperature must be >= 0 and the retry temperature > 0")
        self.model = model
        self.prompt_format = prompt_format
        self.sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        self.retry_temperature = retry_temperature
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

    async def _request(self, backend: _Backend, prompt: str, n: int, sampling: dict) -> tuple[list[str], Usage]:
        params = {"model": self.model, "n": n, **sampling}
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
        return texts, _usage(data)

    async def sample(
        self, prompt: str, n: int = 1, check: Callable[[list[str]], str | None] | None = None, **sampling
    ) -> Completion:
        """``n`` completions of ``prompt``; ``check(texts)`` returns None to accept or a reason to retry.

        ``sampling`` overrides the client's sampling parameters for this call (``temperature``, ``max_tokens``,
        ``top_p``, ``seed``, ...); they are sent as they are.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency * len(self.backends))
        params = {**self.sampling, **sampling}
        backend = None
        for attempt in range(self.retries + 1):
            async with self._slots:
                backend = self._pick(avoid=backend)
                backend.in_flight += 1
                started = time.perf_counter()
                try:
                    texts, usage = await self._request(backend, prompt, n, params)
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
                return Completion(texts, attempt + 1, backend.label, usage)
            if kind not in TRANSIENT_KINDS or attempt == self.retries:
                raise LLMCallError(kind, self.redact(f"{backend.label}: {message}"), attempt + 1)
            if kind == "unparsable" and not params.get("temperature"):
                params["temperature"] = self.retry_temperature
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


def _usage(data: dict) -> Usage:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return Usage()
    tokens = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    return Usage(*(t if isinstance(t, int) and t >= 0 else 0 for t in tokens))


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


def api_key_from_env(var: str | None, option: str = "--api-key-env") -> str | None:
    """The secret in environment variable ``var`` (None when no variable is named); never echoed in errors."""
    if var is None:
        return None
    import os

    value = os.environ.get(var)
    if not value:
        raise ValueError(f"{option} {var}: the environment variable {var} is not set or empty")
    return value
