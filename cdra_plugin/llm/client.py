"""The project's one async LLM client: the PRM gateway, the LLM judge and the DeepPref builder all use it.

Each of them sends prompts to models behind one or more OpenAI-compatible servers (vLLM, SGLang, a hosted API).
``LLMClient`` posts to their ``/chat/completions`` or ``/completions`` endpoint over ``aiohttp`` and adds what a
training run needs:

- scheduling (``cdra_plugin.llm.dispatch``): at most ``concurrency`` calls in flight per backend (what one vLLM replica
  batches well); a call joins the queue of the backend its ``affinity`` key hashes to (rendezvous hashing, so calls
  sharing a prompt prefix meet vLLM's prefix cache) unless that backend is loaded more than a slack above the least
  loaded one, otherwise (and without a key) the least loaded backend's; queues are served in ``priority`` order,
  first come first served by default, a retry keeps its call's priority, and an idle backend takes waiting calls
  from the others;
- a circuit breaker per backend: ``breaker_failures`` consecutive connection failures take it out of rotation,
  after ``breaker_cooldown`` seconds one probe call is let through (half open) and closes it again if it answers;
- ``timeout`` is a deadline for the whole call (connect, send, the complete answer), not for each read;
- retries with exponential backoff and full jitter for transient faults (connection errors, timeouts, 429, 5xx, an
  answer the caller rejects, e.g. one without a parsable score, an answer that is not the expected JSON); other 4xx
  are not retried, and a retry goes to another backend when there is one;
- a retry after a rejected answer samples at ``retry_temperature`` when the configured temperature is 0: a greedy
  model asked the same question again would give the same rejected answer;
- every failure of a backend call is one of ``FAILURE_KINDS`` (no exception of the transport escapes); what is
  still failed after the retries raises ``LLMCallError`` with its kind: the caller applies its policy;
- token usage (``usage`` of the server's answer) on every ``Completion``, for cost reports.

Why aiohttp and not the ``openai`` package: the gateway makes hundreds of calls a second, and the ``openai`` client
(httpx underneath) spent about 0.9 ms of CPU per call against aiohttp's 0.2 ms (``scripts/bench_prm.py``,
``cpu_ms_per_call``); its timeout also bounds each read rather than the call.

The API key is an argument (read from an environment variable by the CLIs); it is sent as the bearer token only,
and redacted from every error message this module produces. Without a key the client sends "EMPTY" (vLLM's
convention), so a hosted key in ``OPENAI_API_KEY`` never leaks to a local server by accident.

    client = LLMClient(["http://127.0.0.1:8000/v1"], "pers-genprm", temperature=0.0)
    completion = await client.sample(prompt, n=1, check=lambda texts: None if ok(texts) else "why not",
                                     affinity=response_hash, priority=request_arrival_monotonic)
    completion.texts, completion.usage.completion_tokens
    client.backend_states()  # [{"backend", "state": "closed", "consecutive_failures": 0, "in_flight": 3, "queued": 0}]
    await client.aclose()
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from cdra_plugin.llm.dispatch import Backend, Dispatcher

# Failure kinds; the transient ones are retried.
TRANSIENT_KINDS = ("timeout", "connection", "rate_limited", "server_error", "unparsable", "bad_response")
FAILURE_KINDS = (*TRANSIENT_KINDS, "client_error")
# Kinds that no retry of the same request fixes: a run that sees one should stop and show the server's message.
FATAL_KINDS = ("client_error",)
PROMPT_FORMATS = ("chat", "completion")
_KEEPALIVE_S = 4.0  # below the 5 s keep-alive of uvicorn (vLLM's server), so a pooled connection is not stale


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
    """``http://host:8000`` -> ``http://host:8000/v1``; rejects what is not an http(s) URL, naming ``option``.

    A query string is refused: the endpoint's path (``/chat/completions``) is appended to the base URL, so it would
    land inside the query. So is user info: the client authenticates with a bearer key, and HTTP clients refuse to
    send both. The message shows the URL without user info and query (they may hold keys).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{option} {url!r}: expected an http(s) base URL such as http://127.0.0.1:8000/v1")
    if parts.query:
        raise ValueError(
            f"{option} {public_url(url.strip())!r}: a base URL takes no query string (the client appends "
            "/chat/completions or /completions to its path)"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{option} {public_url(url.strip())!r}: a base URL takes no user:password@; the key is sent as a bearer "
            "token from the environment variable the api-key-env option names"
        )
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


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
    host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Failed(Exception):
    """One attempt failed with ``kind`` (one of FAILURE_KINDS)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class LLMClient:
    """Sample ``n`` completions for a prompt from the backends, scheduled and retried (see module docstring).

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
        breaker_failures: int = 3,
        breaker_cooldown: float = 5.0,
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
        self._headers = {"Authorization": f"Bearer {api_key or 'EMPTY'}", "Content-Type": "application/json"}
        self._path = "/chat/completions" if prompt_format == "chat" else "/completions"
        self.dispatcher = Dispatcher(
            [Backend(url, public_url(url)) for url in (normalize_base_url(u) for u in base_urls)],
            concurrency,
            breaker_failures=breaker_failures,
            breaker_cooldown=breaker_cooldown,
        )
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def backends(self) -> list[Backend]:
        return self.dispatcher.backends

    def backend_states(self) -> list[dict]:
        """Per backend: ``backend`` (label), ``state`` (closed / open / half_open), ``consecutive_failures``,
        ``in_flight``."""
        return self.dispatcher.states()

    def redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _http(self) -> aiohttp.ClientSession:
        """The session of the running event loop (a client used from a new loop starts afresh)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
            self._loop = loop
            self.dispatcher.reset()
        return self._session

    async def sample(
        self,
        prompt: str,
        n: int = 1,
        check: Callable[[list[str]], str | None] | None = None,
        *,
        affinity: Hashable | None = None,
        priority: float | None = None,
        **sampling,
    ) -> Completion:
        """``n`` completions of ``prompt``; ``check(texts)`` returns None to accept or a reason to retry.

        ``affinity``: calls with equal keys (str, bytes or int) go to the same backend while it is not overloaded
        (the PRM gateway passes a hash of (P, q, response): the prompts of one response's steps share a prefix).
        ``priority``: lower is served first when calls wait for a slot; default the time of this call on
        ``time.monotonic()`` (first come first served), so pass arrival times on that clock. ``sampling``
        overrides the client's sampling parameters for this call (``temperature``, ``max_tokens``, ``top_p``,
        ``seed``, ...); they are sent as they are.
        """
        session = self._http()
        priority = time.monotonic() if priority is None else priority
        params = {**self.sampling, **sampling}
        backend = None
        for attempt in range(self.retries + 1):
            backend = await self.dispatcher.acquire(priority, affinity, avoid=backend)
            started = time.perf_counter()
            kind = None
            try:
                texts, usage = await self._request(session, backend, prompt, n, params)
                kind = "ok"
            except _Failed as exc:
                kind, message, retry_after = exc.kind, exc.args[0], exc.retry_after
            finally:
                self.dispatcher.release(backend, kind)  # kind None: cancelled, the breaker learns nothing
            if kind == "ok":
                reason = check(texts) if check else None
                if reason is not None:
                    kind, message, retry_after = "unparsable", reason, None
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

    async def _request(
        self, session: aiohttp.ClientSession, backend: Backend, prompt: str, n: int, sampling: dict
    ) -> tuple[list[str], Usage]:
        """One attempt; any failure raises ``_Failed`` with its kind."""
        params = {"model": self.model, "n": n, **sampling}
        if self.prompt_format == "chat":
            params["messages"] = [{"role": "user", "content": prompt}]
        else:
            params["prompt"] = prompt
        body = json.dumps(params)  # a sampling override that is not JSON is the caller's error: raised as is
        try:
            # The timeout's ``total`` runs from connecting to the last byte of the body: a deadline for the call.
            async with session.post(
                backend.url + self._path, data=body, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
            raise _Failed("timeout", f"no complete answer within the {self.timeout:g} s deadline") from None
        except Exception as exc:  # aiohttp.ClientError, OSError, or whatever else the transport raises
            raise _Failed("connection", f"{type(exc).__name__}: {exc}") from None
        if status != 200:
            raise _status_failure(status, raw, headers)
        return _parse_answer(raw, n, "message" if self.prompt_format == "chat" else "text", self._path)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = random.uniform(0.0, min(self.backoff_max, self.backoff * 2**attempt))
        return min(self.backoff_max, max(delay, retry_after or 0.0))

    async def health(self, timeout: float = 5.0) -> list[dict]:
        """One entry per backend: reachable (GET /v1/models), serving ``model``, and its breaker ``state``."""
        session = self._http()
        return list(await asyncio.gather(*(self._probe(session, b, timeout) for b in self.backends)))

    async def _probe(self, session: aiohttp.ClientSession, backend: Backend, timeout: float) -> dict:
        entry = {"backend": backend.label, "ok": False, "state": backend.state}
        try:
            async with session.get(backend.url + "/models", timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                raw = await response.read()
                status = response.status
            if status != 200:
                raise ValueError(f"HTTP {status}: {_error_message(raw)}")
            served = [m["id"] for m in json.loads(raw)["data"]]
        except Exception as exc:  # any failure makes the backend unhealthy; the reason is reported
            entry["error"] = self.redact(f"{type(exc).__name__}: {exc}")
            return entry
        entry["ok"] = self.model in served
        if not entry["ok"]:
            entry["error"] = f"model {self.model!r} is not served there (served: {served[:10]})"
        return entry

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _status_failure(status: int, raw: bytes, headers) -> _Failed:
    message = f"HTTP {status}: {_error_message(raw)}"
    if status == 429:
        return _Failed("rate_limited", message, _retry_after(headers))
    if status >= 500 or status == 408:
        return _Failed("server_error", message)
    return _Failed("client_error", message)


def _error_message(raw: bytes) -> str:
    """The ``error.message`` (OpenAI style) or ``message``/``detail`` of an error body, else its first 200 chars."""
    try:
        body = json.loads(raw)
        error = body.get("error", body)
        message = error.get("message") or error.get("detail") if isinstance(error, dict) else error
        if isinstance(message, str):
            return message[:500]
    except (ValueError, AttributeError):
        pass
    return raw[:200].decode("utf-8", "replace")


def _parse_answer(raw: bytes, n: int, field: str, path: str) -> tuple[list[str], Usage]:
    """The ``n`` texts and the usage of a 200 answer; ``_Failed("bad_response")`` for anything else."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # includes cut-short JSON and invalid UTF-8
        raise _Failed("bad_response", f"the answer of {path} is not valid JSON ({exc})") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        got = f"{len(choices)} choice(s)" if isinstance(choices, list) else "no choices list"
        raise _Failed("bad_response", f"expected {n} choice(s) in the answer of {path}, got {got}")
    texts = []
    for choice in choices:
        text = choice.get(field) if isinstance(choice, dict) else None
        if field == "message":
            text = text.get("content") if isinstance(text, dict) else None
        if not isinstance(text, str):
            where = "message.content" if field == "message" else "text"
            raise _Failed("bad_response", f"choices[].{where} is not a string in the answer of {path}")
        texts.append(text)
    return texts, _usage(data)


def _usage(data: dict) -> Usage:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    tokens = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    return Usage(*(t if isinstance(t, int) and t >= 0 else 0 for t in tokens))


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("retry-after", ""))
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
