"""The Pers-GenPRM gateway over HTTP: OpenRLHF's remote reward model, scoring each response step by step (Sec. 2.3).

Endpoints (FastAPI; run with ``cdra prm serve``; the logic behind them is ``cdra_plugin.prm.gateway``):

- ``POST /get_reward``: OpenRLHF's remote RM protocol (``cdra_plugin.prm.protocol``), so
  ``--reward.remote_url http://HOST:PORT/get_reward`` works with any OpenRLHF estimator; the step scores reach the
  CDPA experience maker through the ``extra_logs`` carrier (``cdra_plugin.cdpa.carrier``).
- ``POST /score``: the full per-step result (step spans, texts, critiques, scores, failures, latency).
- ``POST /score_prefix``: a ``/get_reward`` body holding a response still being generated; its completed steps are
  scored ahead of its final ``/get_reward`` (``cdra_plugin.prm.step_cache``; the streaming executor posts it).
- ``GET /health``: probes every backend (``GET /v1/models``); 200 when at least one serves the model, else 503.
- ``GET /metrics``: Prometheus text (``cdra_plugin.prm.metrics``).

Unlike OpenRLHF's ``serve_rm`` (one forward pass of a scalar RM per query), a sample here costs one PRM generation
per step. What a client can do to the server is bounded (the limits are ``cdra_plugin.prm.config``'s):

- bad input gets a 4xx naming the field: invalid JSON, an integer too long to read, nesting too deep, a lone
  surrogate (400), a body over ``--max-body-mb`` (413), the gateway's own limits (413, ``gateway``), headers over
  64 KiB (431; h11 also stops reading headers that grow past it);
- deadlines: a request's headers must be complete within ``--header-timeout`` seconds (counted from the
  connection's opening, or from the first byte of a later request on a kept-alive connection), else the connection
  is closed. A body is read only by ``/get_reward`` and ``/score`` once the token is checked, within
  ``--body-timeout`` seconds of the headers, else 408; every other answer (401, 404, ``/health``, ``/metrics``,
  431) that leaves a body unread closes the connection, so no path waits for a body it will not use. Idle
  kept-alive connections close after 5 s;
- open connections are capped (``--max-connections``): a new connection over the cap closes the oldest one that
  is not in a request (idle, or still sending its headers), so slow or idle clients cannot hold the file
  descriptors that requests in progress need;
- a client that disconnects before its body arrived is logged in one line, not as an error;
- no ``/docs``, ``/redoc`` or ``/openapi.json``; with ``--auth-token-env`` every endpoint wants
  ``Authorization: Bearer <token>`` (or HTTP basic auth with the token as password, which is what OpenRLHF's client
  sends for ``http://user:TOKEN@host:port/get_reward``); a request without it gets 401 and its connection is closed.

At startup every backend is probed once; one that does not serve the model is reported in a warning and the gateway
serves anyway (a replica may still be loading).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hmac
import json
import logging
import resource
import socket
import sys
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from cdra_plugin.prm.config import DEFAULT_MAX_CONNECTIONS, KEEP_ALIVE_S, MAX_HEADER_BYTES
from cdra_plugin.prm.gateway import Gateway
from cdra_plugin.prm.metrics import CONTENT_TYPE
from cdra_plugin.prm.protocol import (
    BadRequest,
    PayloadTooLarge,
    parse_cache_only,
    parse_reward_request,
    parse_score_request,
)
from cdra_plugin.prm.reward import SampleFailed

logger = logging.getLogger("cdra.prm")


class RequestTimeout(Exception):
    pass


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


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} (--max-body-mb)")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes (--max-body-mb)")

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s (--body-timeout)") from None
    return bytes(body)


class RequestGuard:
    """ASGI middleware: headers over ``MAX_HEADER_BYTES`` get 431, and an answer that starts while the request's body
    is still unread closes the connection (``Connection: close``), so a client cannot keep the connection open by
    trickling a body no endpoint reads (401, 404, ``/health``, ``/metrics``)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        size = len(scope["raw_path"]) + len(scope["query_string"]) + sum(len(k) + len(v) + 4 for k, v in headers)
        pending = any(k == b"transfer-encoding" or (k == b"content-length" and v.strip() != b"0") for k, v in headers)
        if size > MAX_HEADER_BYTES:
            detail = f"request headers of {size} bytes exceed the limit of {MAX_HEADER_BYTES}"
            return await JSONResponse({"detail": detail}, 431, {"Connection": "close"})(scope, receive, send)

        async def reading():
            nonlocal pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                pending = False
            return message

        async def answering(message):
            answer_headers = message.get("headers", [])
            if (
                message["type"] == "http.response.start"
                and pending
                and (b"connection", b"close") not in answer_headers
            ):
                message = {**message, "headers": [*answer_headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, reading, answering)


def parse_json(body: bytes):
    """The JSON value of a request body; ``BadRequest`` saying what is wrong (never a traceback)."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc.msg} at char {exc.pos})") from None
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except ValueError:  # an integer longer than the interpreter converts
        digits = sys.get_int_max_str_digits()
        raise BadRequest(f"the request body holds an integer of more than {digits} digits") from None


def create_app(gateway: Gateway, *, auth_token: str | None = None, probe_backends: bool = True) -> FastAPI:
    """The FastAPI app serving ``gateway`` (see module docstring); its limits are ``gateway.config``'s."""
    metrics, config = gateway.metrics, gateway.config

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if probe_backends:
            await _probe_backends(gateway)
        yield
        await gateway.scorer.client.aclose()

    app = FastAPI(title="cdra Pers-GenPRM gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard)

    async def handle(endpoint: str, request: Request, work) -> Response:
        started = time.perf_counter()
        status = None
        try:
            if auth_token is not None and not _authorized(request.headers.get("authorization"), auth_token):
                headers = {"WWW-Authenticate": "Bearer", "Connection": "close"}  # its body is never read
                response = JSONResponse({"detail": "missing or wrong bearer token"}, 401, headers)
            else:
                response = await work()
        except BadRequest as exc:
            response = JSONResponse({"detail": str(exc)}, 400)
        except PayloadTooLarge as exc:
            response = JSONResponse({"detail": str(exc)}, 413)
        except RequestTimeout as exc:
            response = JSONResponse({"detail": str(exc)}, 408, {"Connection": "close"})
        except ClientDisconnect:
            logger.info("%s: the client disconnected before its request body arrived", endpoint)
            response, status = Response(status_code=400), "disconnected"
        except SampleFailed as exc:
            logger.warning("%s", exc)
            response = JSONResponse({"detail": str(exc)}, 502)
        except Exception as exc:  # a bug: answer and keep serving
            logger.exception("%s failed", endpoint)
            response = JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)
        metrics.requests.labels(endpoint, status or str(response.status_code)).inc()
        metrics.request_latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def read_json(request: Request):
        return parse_json(await _read_body(request, config.max_body_bytes, config.body_timeout))

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Response:
        async def work():
            samples = parse_reward_request(await read_json(request))
            return JSONResponse(await gateway.rewards(samples))

        return await handle("get_reward", request, work)

    @app.post("/score_prefix")
    async def score_prefix(request: Request) -> Response:
        async def work():
            samples = parse_reward_request(await read_json(request))
            return JSONResponse(await gateway.score_prefix(samples))

        return await handle("score_prefix", request, work)

    @app.post("/score")
    async def score(request: Request) -> Response:
        async def work():
            body = await read_json(request)
            samples = parse_score_request(body)
            return JSONResponse(await gateway.details(samples, cache_only=parse_cache_only(body)))

        return await handle("score", request, work)

    @app.get("/health")
    async def health(request: Request) -> Response:
        async def work():
            body = await gateway.health()
            return JSONResponse(body, 503 if body["status"] == "down" else 200)

        return await handle("health", request, work)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        async def work():
            return Response(metrics.render(), media_type=CONTENT_TYPE)

        return await handle("metrics", request, work)

    return app


async def _probe_backends(gateway: Gateway) -> None:
    dispatcher = gateway.scorer.client.dispatcher
    what = (
        f"a call that fails there is retried on another backend; {dispatcher.breaker_failures} failures in a row (a "
        f"401/403/404 or a hang at once) take it out of rotation, and a probe every {dispatcher.breaker_cooldown:g} s "
        "puts it back when it answers" if len(dispatcher.backends) > 1 else "it is the only backend: calls fail until "
        "it answers"
    )  # fmt: skip
    for backend in (await gateway.health())["backends"]:
        if not backend["ok"]:
            logger.warning("backend %s is not usable now (%s); serving anyway: %s (GET /health shows its state)",
                           backend["backend"], backend.get("error"), what)  # fmt: skip


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``OSError`` with a one-line reason (e.g. the port is in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port/--host") from None
    sock.set_inheritable(True)
    return sock


def connection_cap(gateway: Gateway) -> int:
    """``--max-connections`` (default ``DEFAULT_MAX_CONNECTIONS``, or what the file descriptor limit leaves beside
    the PRM's connections if less), the soft limit raised towards the hard one as needed; ``ValueError`` naming the
    option when an explicit cap does not fit."""
    client, wanted = gateway.scorer.client, gateway.config.max_connections
    reserved = client.concurrency * len(client.backends) + 64  # PRM calls in flight, files, the listening socket
    cap = wanted or DEFAULT_MAX_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < reserved + cap:
        soft = reserved + cap if hard == resource.RLIM_INFINITY else min(reserved + cap, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    room = cap if soft == resource.RLIM_INFINITY else soft - reserved
    if room < (cap if wanted else 1):
        raise ValueError(
            f"--max-connections {cap} does not fit the file descriptor limit {soft} beside {reserved} for the PRM "
            "(--concurrency x backends + 64): lower it or --concurrency, or raise `ulimit -n`"
        )
    return min(room, cap)


def serve(app, sock: socket.socket, gateway: Gateway, *, max_connections: int, log_level: str = "info"):
    """Run ``app`` on the bound ``sock`` until SIGINT/SIGTERM, with the header deadline and the connection cap."""
    config = uvicorn.Config(
        app,
        http=_guarded_h11(gateway.config.header_timeout, max_connections, gateway.metrics),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_S,
        log_level=log_level,
        access_log=log_level == "debug",
    )
    uvicorn.Server(config).run(sockets=[sock])


def _guarded_h11(header_timeout: float, max_connections: int, metrics):
    """uvicorn's h11 protocol with a deadline for a request's headers and a cap on open connections.

    uvicorn has a keep-alive timeout but no deadline for a request's headers: a client that opens a connection and
    sends a byte now and then (slowloris) holds it, and a file descriptor, forever. h11 (not httptools) because it
    also bounds the header size (``h11_max_incomplete_event_size``). Connections that are not in a request (still
    sending headers, or idle between requests) are kept oldest first in ``waiting``; one over ``max_connections``
    closes the oldest of them (the newcomer itself when no other waits), so requests in progress keep their
    connections however many idle or slow ones arrive.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting: collections.OrderedDict[H11Protocol, None] = collections.OrderedDict()

    class GuardedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            waiting[self] = None
            self._deadline = self.loop.call_later(header_timeout, self._expire)
            if len(self.connections) > max_connections:
                oldest = next(iter(waiting))
                waiting.pop(oldest)
                metrics.connections_shed.inc()
                oldest.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are complete: a request is in progress
                self._cancel()
                waiting.pop(self, None)
            elif self._deadline is None:  # the next request on a kept-alive connection has begun
                self._deadline = self.loop.call_later(header_timeout, self._expire)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                waiting[self] = None  # idle between requests: first to go when the cap is reached

        def connection_lost(self, exc) -> None:
            self._cancel()
            waiting.pop(self, None)
            super().connection_lost(exc)

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11
