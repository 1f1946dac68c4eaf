"""What both loopback fakes share: scripted replies, injected faults, the server lifecycle.

A fake is an aiohttp server on 127.0.0.1 with an ephemeral port. Script it with :meth:`reply`
(canned answers, consumed in order; :attr:`default` afterwards) and :meth:`fail` (the next N
requests answer an HTTP error); stream faults (delay, cut, malformed chunk, stall, error event)
are fields of a :class:`FakeReply`. Every request is recorded in :attr:`requests`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeToolCall:
    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass
class FakeReply:
    """One canned answer and how to deliver it.

    ``finish_reason`` is the wire's own value (OpenAI ``stop``/``length``/``tool_calls``, Anthropic
    ``end_turn``/``stop_sequence``/``max_tokens``/``tool_use``); ``None`` picks the natural one.
    Stream faults count the stream's events (SSE frames) already sent: ``cut_after=3`` sends three
    frames and then drops the connection.
    """

    text: str = "Hello from the fake."
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 12
    completion_tokens: int = 7
    cached_tokens: int = 0
    text_chunk: int = 4
    args_chunk: int = 5
    delay: float = 0.0  # before the response headers
    chunk_delay: float = 0.0  # between stream frames
    cut_after: int | None = None
    malformed_after: int | None = None
    stall_after: int | None = None
    error_after: int | None = None
    raw_arguments: str | None = None  # sent instead of the first call's JSON arguments (broken JSON tests)
    whole: bool = False  # answer with one JSON object even when a stream was asked for
    frames: list[bytes] | None = None  # send exactly these stream frames instead of the generated ones
    extra: dict[str, Any] = field(default_factory=dict)  # extra top-level fields in the last chunk / whole answer


@dataclass
class Failure:
    status: int
    retry_after: str | None = None
    message: str | None = None


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


class FakeServer:
    """Base of the fakes; subclasses add routes and speak their wire format."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.default = FakeReply()
        self.replies: deque[FakeReply] = deque()
        self.failures: deque[Failure] = deque()
        self.requests: list[Recorded] = []
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self.port = 0

    # -- scripting

    def reply(self, *replies: FakeReply) -> None:
        self.replies.extend(replies)

    def fail(self, times: int, status: int, *, retry_after: str | None = None, message: str | None = None) -> None:
        for _ in range(times):
            self.failures.append(Failure(status, retry_after, message))

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests]

    # -- lifecycle

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeServer:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        self._release.set()  # let stalled streams end
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- request handling helpers

    async def _record(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        self.requests.append(Recorded(request.path, dict(request.headers), body if isinstance(body, dict) else {}))
        return body if isinstance(body, dict) else {}

    def _next(self) -> FakeReply:
        return self.replies.popleft() if self.replies else self.default

    async def _send_frames(
        self,
        request: web.Request,
        frames: list[bytes],
        reply: FakeReply,
        *,
        malformed: bytes,
        error_frame: bytes,
    ) -> web.StreamResponse:
        if reply.frames is not None:
            frames = reply.frames
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i, frame in enumerate(frames):
            if reply.cut_after == i:
                # drop the connection mid-body: the chunked encoding never terminates. Pause first so
                # the client has read what was sent (aiohttp drops buffered data once the cut is seen)
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.close()
                return resp
            if reply.stall_after == i:
                await self._release.wait()
                return resp
            if reply.error_after == i:
                await resp.write(error_frame)
                await resp.write_eof()
                return resp
            if reply.malformed_after == i:
                await resp.write(malformed)
            await resp.write(frame)
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        await resp.write_eof()
        return resp

    async def _gate(
        self, request: web.Request, error: Callable[[int, str], web.Response], auth_ok: Callable[[], bool]
    ) -> web.Response | None:
        """Auth and injected failures; ``None`` when the request may be served."""
        if self.api_key is not None and not auth_ok():
            return error(401, "invalid api key")
        if self.failures:
            f = self.failures.popleft()
            resp = error(f.status, f.message or f"injected failure {f.status}")
            if f.retry_after is not None:
                resp.headers["Retry-After"] = f.retry_after
            return resp
        return None


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


async def maybe_sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)
