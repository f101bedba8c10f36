"""A scripted OpenAI-compatible server: the one test double of the project (it stands in for the remote LLM).

It answers ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models`` on 127.0.0.1 (an ephemeral
port, served by uvicorn from a background thread), with outputs the test chooses, and records every request. Real
clients (the project's ``LLMClient`` behind the gateway, the judge and the builder; the ``openai`` package in a
conformance test) talk to it over HTTP as to vLLM.

    from cdra_plugin.stub import Fault, ScriptedLLM, score_text

    with ScriptedLLM(script=lambda req: score_text(0.5)) as llm:      # llm.base_url == "http://127.0.0.1:PORT/v1"
        llm.enqueue(Fault.http(500), Fault.hang(5.0), "no score here", score_text(7), "SCORE: nan")
        ...                                                          # queued replies are served first, in order
        llm.requests[-1].prompt                                      # what the client sent

A reply is a string (every one of the ``n`` choices gets it), a list of ``n`` strings, or a ``Fault``. A request
for a model it does not serve (``model``, and any ``aliases``) gets vLLM's answer, HTTP 404 "The model `NAME` does
not exist.". ``latency``
delays every answer and ``max_concurrency`` caps how many are being "generated" at once (the others queue), which
makes it a simulated vLLM server for benchmarks. ``BackgroundServer`` runs any ASGI app the same way (tests use it
to host the real gateway).

As a command (``python -m cdra_plugin.stub``) it stands in for ``vllm serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class BackgroundServer:
    """Serve an ASGI app with uvicorn on ``host``:``port`` (0: ephemeral) from a daemon thread (start/stop/with)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class Fault:
    """What the server does instead of answering: an HTTP error status, or hanging for ``hang_s`` seconds."""

    status: int | None = None
    hang_s: float | None = None
    message: str = "injected fault"

    @staticmethod
    def http(status: int, message: str = "injected fault") -> Fault:
        return Fault(status=status, message=message)

    @staticmethod
    def hang(seconds: float) -> Fault:
        """Answer nothing for ``seconds`` (past the client's timeout), then what the script says (504 if a fault)."""
        return Fault(hang_s=seconds)


@dataclass
class ScriptedRequest:
    """One request the server got: ``endpoint`` is "chat", "completions" or "models"."""

    endpoint: str
    body: dict
    headers: dict[str, str]
    prompt: str = ""
    n: int = 1
    received_at: float = field(default_factory=time.monotonic)


Reply = str | list[str] | Fault


def score_text(score: float | str, critique: str = "The step infers the preference plausibly.") -> str:
    """A PRM-style output, ``Reasoning: <critique>`` then ``SCORE: <score>`` (score may be any text, e.g. "nan")."""
    return f"Reasoning: {critique}\nSCORE: {score}"


_TAG = re.compile(r"\[(score|http|hang)=([^\]]*)\]")


def prm_step_judge(default: float = 0.5) -> Callable[[ScriptedRequest], Reply]:
    """A script for Pers-GenPRM prompts (Fig. 15): it reads tags in the step under judgement (the text after the last
    "New Thought to Evaluate:"), so a test writes the PRM's behaviour into the policy response itself:
    ``[score=0.3]`` -> "SCORE: 0.3" (any text: "7", "nan", "none" gives an output with no score),
    ``[http=500]`` -> that status, ``[hang=5]`` -> hang 5 s; untagged steps get ``default``.
    """

    def judge(request: ScriptedRequest) -> Reply:
        step = request.prompt.rpartition("New Thought to Evaluate:")[2]
        tag = _TAG.search(step)
        if tag is None:
            return score_text(default)
        kind, value = tag.groups()
        if kind == "http":
            return Fault.http(int(value))
        if kind == "hang":
            return Fault.hang(float(value))
        return "Reasoning: no score given." if value == "none" else score_text(value)

    return judge


def approx_tokens(text: str) -> int:
    """Words and punctuation marks: a tokenizer-free stand-in for token counts in ``usage``."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class ScriptedLLM:
    """An OpenAI-compatible server whose outputs come from ``enqueue``d replies first, then ``script(request)``."""

    def __init__(
        self,
        script: Callable[[ScriptedRequest], Reply] | None = None,
        *,
        model: str = "scripted-prm",
        aliases: tuple[str, ...] = (),
        latency: float = 0.0,
        max_concurrency: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.script = script or (lambda request: score_text(0.5))
        self.model = model
        self.served = (model, *aliases)  # every name it answers to, as vLLM's --served-model-name takes several
        self.latency = latency
        self.max_concurrency = max_concurrency
        self.healthy = True  # False: /v1/models answers 503
        self._queue: deque[Reply] = deque()
        self._requests: list[ScriptedRequest] = []
        self._lock = threading.Lock()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slot_free: list[float] | None = None  # heap: when each of the max_concurrency slots frees up
        self.max_active = 0  # the most requests ever open at once in _generate (counted when latency > 0)
        self._active = 0
        self._server = BackgroundServer(self._build_app(), host, port)

    # -- test-facing API ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return self._server.url + "/v1"

    @property
    def requests(self) -> list[ScriptedRequest]:
        """Completion requests received so far (``/v1/models`` probes are in ``all_requests``)."""
        return [r for r in self.all_requests if r.endpoint != "models"]

    @property
    def all_requests(self) -> list[ScriptedRequest]:
        with self._lock:
            return list(self._requests)

    def enqueue(self, *replies: Reply) -> None:
        """Replies for the next completion requests, served in order before ``script`` is asked."""
        with self._lock:
            self._queue.extend(replies)

    def clear(self) -> None:
        """Forget recorded requests and queued replies."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()

    def start(self) -> ScriptedLLM:
        self._server.start()
        return self

    def stop(self) -> None:
        if self._stopping is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)  # release hanging handlers
        self._server.stop()

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- server side ----------------------------------------------------------------------------------------------
    def _record(self, request: ScriptedRequest, served: bool = True) -> Reply | None:
        """Record ``request``; the next queued reply if it is a completion request the server answers."""
        with self._lock:
            self._requests.append(request)
            if request.endpoint == "models" or not served:
                return None
            return self._queue.popleft() if self._queue else None

    def _build_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            self._slot_free = [0.0] * self.max_concurrency if self.max_concurrency else None
            yield

        app = FastAPI(lifespan=lifespan)

        @app.get("/v1/models")
        async def models(request: Request):
            self._record(ScriptedRequest("models", {}, dict(request.headers)))
            if not self.healthy:
                return JSONResponse({"error": {"message": "scripted server marked unhealthy"}}, status_code=503)
            cards = [{"id": name, "object": "model", "created": 0, "owned_by": "t"} for name in self.served]
            return {"object": "list", "data": cards}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
            return await self._answer("chat", body, request, prompt)

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            return await self._answer("completions", body, request, str(body.get("prompt", "")))

        return app

    async def _answer(self, endpoint: str, body: dict, request: Request, prompt: str) -> JSONResponse:
        n = int(body.get("n") or 1)
        recorded = ScriptedRequest(endpoint, body, dict(request.headers), prompt=prompt, n=n)
        if body.get("model") not in self.served:  # as vLLM answers a name it does not serve
            self._record(recorded, served=False)
            error = {"message": f"The model `{body.get('model')}` does not exist.", "type": "NotFoundError",
                     "param": None, "code": 404}  # fmt: skip
            return JSONResponse({"error": error}, status_code=404)
        reply = self._record(recorded)
        if reply is None:
            reply = self.script(recorded)
        if isinstance(reply, Fault) and reply.hang_s is not None:
            try:
                await asyncio.wait_for(self._stopping.wait(), reply.hang_s)
            except asyncio.TimeoutError:
                pass
            reply = self.script(recorded)
            if isinstance(reply, Fault):  # the script hangs again: give up like a proxy would
                reply = Fault.http(504, "scripted hang ended")
        if isinstance(reply, Fault):
            return JSONResponse({"error": {"message": reply.message, "code": reply.status}}, status_code=reply.status)
        texts = [reply] * n if isinstance(reply, str) else list(reply)
        await self._generate()
        return JSONResponse(self._completion_body(endpoint, body, prompt, texts))

    async def _generate(self) -> None:
        """Simulated generation: ``latency`` seconds in one of ``max_concurrency`` slots (the earliest free one).

        Slot times are computed, not awaited through a semaphore, so the simulator itself adds no scheduling gaps
        between one request leaving a slot and the next one taking it.
        """
        if not self.latency:
            return
        self._active += 1
        self.max_active = max(self.max_active, self._active)
        try:
            delay = self.latency
            if self._slot_free is not None:
                now = asyncio.get_running_loop().time()
                start = max(now, heapq.heappop(self._slot_free))
                heapq.heappush(self._slot_free, start + self.latency)
                delay = start + self.latency - now
            await asyncio.sleep(delay)
        finally:
            self._active -= 1

    def _completion_body(self, endpoint: str, body: dict, prompt: str, texts: list[str]) -> dict:
        usage = {
            "prompt_tokens": approx_tokens(prompt),
            "completion_tokens": sum(approx_tokens(t) for t in texts),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if endpoint == "chat":
            choices = [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop", "logprobs": None}
                for i, t in enumerate(texts)
            ]
            kind = "chat.completion"
        else:
            choices = [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)]
            kind = "text_completion"
        model = body.get("model", self.model)
        return {"id": "scripted-0", "object": kind, "created": 0, "model": model, "choices": choices, "usage": usage}
