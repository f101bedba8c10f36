"""A hostile OpenAI-compatible backend: misbehaves at the HTTP byte level, where ``ScriptedLLM`` cannot.

``ScriptedLLM`` always answers with well-formed HTTP and JSON. Real backends (a crashing vLLM, a proxy, a network
cut) also answer a 200 whose JSON is cut short, bytes that are not JSON, JSON of the wrong shape, a body trickled a
byte at a time, or close the connection halfway. ``HostileLLM`` serves such answers from a raw asyncio TCP server
on 127.0.0.1 (a background thread), one per request in the order given, so tests can check that a client turns
each of them into a counted failure of a named kind, within its deadline.

    from hostile import HostileLLM, Raw

    with HostileLLM(Raw.body(b'{"choices": [{"mess'), Raw.trickle(body, interval=0.5)) as llm:
        client = LLMClient([llm.base_url], "any-model")     # llm.requests: how many requests arrived

The last behaviour repeats for every later request.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Raw:
    """What the server does with one request (build with the static methods)."""

    kind: str  # body | cut | trickle | close | garbage
    payload: bytes = b""
    status: int = 200
    interval: float = 0.0

    @staticmethod
    def body(payload: bytes, status: int = 200) -> Raw:
        """A complete HTTP answer with exactly ``payload`` as its JSON body (which may be invalid)."""
        return Raw("body", payload, status)

    @staticmethod
    def cut(payload: bytes) -> Raw:
        """Headers announcing twice ``len(payload)`` bytes, ``payload``, then the connection closes."""
        return Raw("cut", payload)

    @staticmethod
    def trickle(payload: bytes, interval: float) -> Raw:
        """A 200 whose body arrives one byte every ``interval`` seconds."""
        return Raw("trickle", payload, interval=interval)

    @staticmethod
    def close() -> Raw:
        """Read the request, then close the connection without answering."""
        return Raw("close")

    @staticmethod
    def garbage(payload: bytes = b"\x00\xffnot http at all\r\n\r\n") -> Raw:
        """Bytes that are not an HTTP response."""
        return Raw("garbage", payload)


def completion_json(text: str) -> bytes:
    """A well-formed chat completion with one choice (to trickle, or to cut short)."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return json.dumps({"id": "hostile", "object": "chat.completion", "choices": [choice]}).encode()


class HostileLLM:
    def __init__(self, *behaviours: Raw):
        if not behaviours:
            raise ValueError("HostileLLM needs at least one behaviour")
        self.behaviours = list(behaviours)
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HostileLLM:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("HostileLLM did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> HostileLLM:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, sock=self._sock))
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await _read_request(reader):
                behaviour = self.behaviours[min(self.requests, len(self.behaviours) - 1)]
                self.requests += 1
                if not await _answer(behaviour, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """Consume one request (headers and Content-Length body); False at the end of the connection."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return True


def _head(status: int, length: int) -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()


async def _answer(behaviour: Raw, writer: asyncio.StreamWriter) -> bool:
    """Send ``behaviour``'s answer; False when the connection must close afterwards."""
    payload = behaviour.payload
    if behaviour.kind == "close":
        return False
    if behaviour.kind == "garbage":
        writer.write(payload)
        await writer.drain()
        return False
    if behaviour.kind == "cut":
        writer.write(_head(200, 2 * len(payload)) + payload)
        await writer.drain()
        return False
    writer.write(_head(behaviour.status, len(payload)))
    if behaviour.kind == "trickle":
        for i in range(len(payload)):
            writer.write(payload[i : i + 1])
            await writer.drain()
            await asyncio.sleep(behaviour.interval)
    else:
        writer.write(payload)
    await writer.drain()
    return True
