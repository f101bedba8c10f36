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
- a circuit breaker per backend takes a replica that cannot serve out of rotation: ``breaker_failures``
  consecutive failures (no connection, 5xx, a broken answer), or at once a 401/403/404 (``not_served``: a mis-set
  ``--served-model-name``, a missing key) or a timeout while it answered nothing and the others did (it hangs); after
  ``breaker_cooldown`` seconds the client probes it (half open) with a call of its own (``max_tokens`` 1, so no
  caller's call waits on a replica that may hang) and puts it back in rotation if it answers;
- ``timeout`` is a deadline for the whole call (connect, send, the complete answer), not for each read;
- retries with exponential backoff and full jitter for transient faults (connection errors, timeouts, 429, 5xx, an
  answer the caller rejects, e.g. one without a parsable score, an answer that is not the expected JSON); a retry
  never goes back to the replica that just failed it while another is in rotation. A ``not_served`` call goes to
  another replica at once, without using a retry; a 400 (or another 4xx: the request itself) is not retried;
- a retry after a rejected answer samples at ``retry_temperature`` when the configured temperature is 0: a greedy
  model asked the same question again would give the same rejected answer;
- every failure of a backend call is one of ``FAILURE_KINDS`` (no exception of the transport or of reading the
  answer escapes: a body nested too deeply to parse is a ``bad_response``); what is still failed after the retries
  raises ``LLMCallError`` with its kind: the caller applies its policy (a kind in ``FATAL_KINDS`` should stop a run);
- per-backend state for Prometheus (``register_metrics``) and ``/health`` (``health``);
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
    client.backend_states()  # [{"backend", "state": "closed", "consecutive_failures": 0, "in_flight": 3, ...}]
    client.register_metrics(registry, "cdra_prm")  # cdra_prm_backend_state{backend,state}, ... (BackendMetrics)
    await client.aclose()

``connect(urls, model, "--judge", **keywords)`` builds a client whose URL errors name the option the URLs came from;
the keywords are checked in ``cdra_plugin.llm.options`` (``OptionError`` naming the bad one).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import aiohttp

from cdra_plugin.llm.dispatch import Backend, BackendMetrics, Dispatcher
from cdra_plugin.llm.options import OPTIONS, Endpoint, OptionError, parse_base_urls, public_url
from cdra_plugin.llm.options import check as check_options

# Failure kinds; the transient ones are retried. not_served: the replica answered 401, 403 or 404 (it cannot serve
# this model: wrong --served-model-name, key or path), and no other replica could; client_error: another 4xx, the
# request itself is wrong (a prompt over the context length, a bad parameter).
TRANSIENT_KINDS = ("timeout", "connection", "rate_limited", "server_error", "unparsable", "bad_response")
FAILURE_KINDS = (*TRANSIENT_KINDS, "not_served", "client_error")
# Kinds that no retry of the same request fixes: a run that sees one should stop and show the server's message.
FATAL_KINDS = ("not_served", "client_error")
PROMPT_FORMATS = OPTIONS["prompt_format"].choices
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


class _Failed(Exception):
    """One attempt failed with ``kind`` (one of FAILURE_KINDS)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class LLMClient:
    """Sample ``n`` completions for a prompt from the backends, scheduled and retried (see module docstring).

    ``base_urls``: a list, or one comma-separated string. The keywords are ``cdra_plugin.llm.options.OPTIONS``
    (checked there: a bad value raises ``OptionError``) and ``metrics``: optional, with
    ``observe_call(backend_label, outcome_kind, seconds)`` and a ``retries`` counter
    (``cdra_plugin.prm.metrics.Metrics`` has both).
    """

    def __init__(
        self,
        base_urls: str | Sequence[str],
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
        check_options({key: value for key, value in locals().items() if key in OPTIONS})  # the option keywords
        urls = parse_base_urls(base_urls)
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
            [Backend(url, public_url(url)) for url in urls],
            concurrency,
            breaker_failures=breaker_failures,
            breaker_cooldown=breaker_cooldown,
        )
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probes: set[asyncio.Task] = set()  # held here: the event loop keeps only weak references to tasks

    @property
    def backends(self) -> list[Backend]:
        return self.dispatcher.backends

    def backend_states(self) -> list[dict]:
        """Per backend: ``backend`` (label), ``state`` (closed / open / half_open), ``consecutive_failures``,
        ``in_flight``, ``queued``, ``opened_by`` (the failure kind that last opened its breaker) and ``error`` (the
        message of its last failure)."""
        return self.dispatcher.states()

    def register_metrics(self, registry, prefix: str) -> None:
        """Show the backends' state on the Prometheus ``registry``, as ``<prefix>_backend_*`` and
        ``<prefix>_calls_in_flight`` (``cdra_plugin.llm.dispatch.BackendMetrics``)."""
        registry.register(BackendMetrics(self.dispatcher, prefix))

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
        backend, retries, failovers = None, 0, 0
        for attempts in itertools.count(1):
            self._start_probes(session)
            backend = await self.dispatcher.acquire(priority, affinity, avoid=backend)
            started = time.monotonic()
            kind, message, retry_after = None, None, None
            try:
                texts, usage = await self._request(session, backend, prompt, n, params)
                kind = "ok"
            except _Failed as exc:
                kind, message, retry_after = exc.kind, self.redact(f"{backend.label}: {exc}"), exc.retry_after
            finally:
                self.dispatcher.release(backend, kind, started, message)  # kind None: cancelled, nothing learnt
            if kind == "ok":
                reason = check(texts) if check else None
                if reason is not None:
                    kind, message = "unparsable", self.redact(f"{backend.label}: {reason}")
            if self.metrics is not None:
                self.metrics.observe_call(backend.label, kind, time.monotonic() - started)
            if kind == "ok":
                return Completion(texts, attempts, backend.label, usage)
            if kind == "not_served" and failovers < len(self.backends) - 1 and self.dispatcher.in_rotation():
                failovers += 1  # another replica may serve the model: at once, without using a retry
            elif kind not in TRANSIENT_KINDS or retries == self.retries:
                raise LLMCallError(kind, message, attempts)
            else:
                if kind == "unparsable" and not params.get("temperature"):
                    params["temperature"] = self.retry_temperature
                await asyncio.sleep(self._delay(retries, retry_after))
                retries += 1
            if self.metrics is not None:
                self.metrics.retries.inc()
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

    def _start_probes(self, session: aiohttp.ClientSession) -> None:
        for backend in self.dispatcher.due_probes():
            task = asyncio.ensure_future(self._probe_call(session, backend))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def _probe_call(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        """One call of the client's own to a backend out of rotation; the breaker closes if it answers."""
        started, kind, message = time.monotonic(), "ok", None
        try:
            await self._request(session, backend, "ping", 1, {**self.sampling, "max_tokens": 1})
        except _Failed as exc:
            kind, message = exc.kind, self.redact(f"{backend.label}: {exc}")
        self.dispatcher.probed(backend, kind, started, message)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = random.uniform(0.0, min(self.backoff_max, self.backoff * 2**attempt))
        return min(self.backoff_max, max(delay, retry_after or 0.0))

    async def health(self, timeout: float = 5.0) -> list[dict]:
        """One entry per backend: ``ok`` when it is reachable (GET /v1/models), serves ``model`` and is in rotation
        (its breaker ``state`` closed); else ``error`` says why."""
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
        if self.model not in served:
            entry["error"] = f"model {self.model!r} is not served there (served: {served[:10]})"
        elif backend.state != "closed":  # it answers /models, but its calls failed (a hung engine, 5xx, 404)
            entry["error"] = f"out of rotation (breaker {backend.state}) after {backend.opened_by}: {backend.error}"
        else:
            entry["ok"] = True
        return entry

    async def aclose(self) -> None:
        for task in list(self._probes):
            task.cancel()
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _status_failure(status: int, raw: bytes, headers) -> _Failed:
    message = f"HTTP {status}: {_error_message(raw)}"
    if status == 429:
        return _Failed("rate_limited", message, _retry_after(headers))
    if status >= 500 or status == 408:
        return _Failed("server_error", message)
    if status in (401, 403, 404):  # this replica cannot serve the model (name, key, path); another one may
        return _Failed("not_served", message)
    return _Failed("client_error", message)


def _error_message(raw: bytes) -> str:
    """The ``error.message`` (OpenAI style) or ``message``/``detail`` of an error body, else its first 200 chars."""
    try:
        body = json.loads(raw)
        error = body.get("error", body)
        message = error.get("message") or error.get("detail") if isinstance(error, dict) else error
        if isinstance(message, str):
            return message[:500]
    except (ValueError, AttributeError, RecursionError):
        pass
    return raw[:200].decode("utf-8", "replace")


def _parse_answer(raw: bytes, n: int, field: str, path: str) -> tuple[list[str], Usage]:
    """The ``n`` texts and the usage of a 200 answer; ``_Failed("bad_response")`` for anything else."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # includes cut-short JSON and invalid UTF-8
        raise _Failed("bad_response", f"the answer of {path} is not valid JSON ({exc})") from None
    except RecursionError:  # arrays or objects nested past the interpreter's recursion limit
        raise _Failed("bad_response", f"the answer of {path} is JSON nested too deeply to read") from None
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


def connect(urls: str | Sequence[str], model: str, option: str = "--backend", **client_kwargs) -> LLMClient:
    """An ``LLMClient`` for base URL(s) ``urls`` (comma-separated, or a list); a bad URL is an error naming ``option``.

    ``client_kwargs`` are ``LLMClient``'s keywords (``temperature``, ``concurrency``, ``api_key`` (the key itself),
    ...): the Python API of ``cdra eval`` passes its callers' keywords through here.
    """
    try:
        return LLMClient(urls, model, **client_kwargs)
    except OptionError as exc:
        raise exc.named(option) if exc.key == "urls" else exc from None


def connect_endpoint(endpoint: Endpoint, args, **overrides) -> LLMClient:
    """The ``LLMClient`` a command's parsed ``args`` describe for ``endpoint`` (``overrides``: keywords that win); a
    bad value is an ``OptionError`` naming the option as the command spells it."""
    urls, model = endpoint.target(args)
    return connect(urls, model, endpoint.urls, **endpoint.client_kwargs(args, **overrides))
