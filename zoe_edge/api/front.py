"""Fronts as translators: a wire format's parse and render, over one generic serve loop.

A :class:`Front` turns a JSON body into a validated body model and a canonical request, and
makes an :class:`Answer` that renders the canonical events of one answer in its wire format
(whole, or as stream chunks). :func:`serve` does the rest the same way for every front: the
gateway call, status and headers before the first byte, collecting a whole answer, writing a
stream, a client that goes away, and an error after the first byte (the front's own error chunk).
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web

from zoe_edge.api.common import GATEWAY, context, read_json, request_headers
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, ReasoningDelta, TextDelta, ToolCall
from zoe_edge.errors import ZoeError
from zoe_edge.routing.dispatch import Dispatched
from zoe_edge.routing.priority import Traffic
from zoe_edge.service import Collected, RequestContext, Service, collect

log = logging.getLogger("zoe_edge.api")


class Body(Protocol):
    """What the serve loop reads of every front's validated body."""

    @property
    def model(self) -> str: ...

    @property
    def stream(self) -> bool: ...

    @property
    def cache(self) -> CacheControls | None: ...


B = TypeVar("B", bound=Body)


class Answer(ABC):
    """One answer rendered in a wire format; a stream's chunks are whole wire frames (SSE events, NDJSON lines)."""

    content_type = "text/event-stream"

    @abstractmethod
    def whole(self, answer: Collected) -> dict[str, Any]: ...

    def opening(self) -> list[bytes]:
        """Frames before the first event (Anthropic's ``message_start``, Responses' ``response.created``)."""
        return []

    @abstractmethod
    def text(self, delta: TextDelta) -> list[bytes]: ...

    def reasoning(self, delta: ReasoningDelta) -> list[bytes]:
        """A front whose wire format has no place for thinking drops it: it never leaks into the answer."""
        return []

    @abstractmethod
    def call(self, call: ToolCall) -> list[bytes]: ...

    @abstractmethod
    def finish(self, finish: Finish) -> list[bytes]: ...

    @abstractmethod
    def error(self, event: ErrorEvent) -> list[bytes]:
        """The frames that end a stream whose generation failed after the first byte."""


class Front(ABC, Generic[B]):
    """A wire format: its body model, its canonical request, its answers and its errors."""

    traffic: Traffic = "other"  # which front, for the default priority of its requests

    @abstractmethod
    def parse(self, data: Any) -> B:
        """The validated body; a 400 naming the field otherwise."""

    @abstractmethod
    def canonical(self, body: B) -> GenerationRequest: ...

    @abstractmethod
    def answer(self, ctx: RequestContext, body: B, dispatched: Dispatched) -> Answer: ...

    @abstractmethod
    def error_response(self, exc: ZoeError) -> web.Response:
        """An error before the first byte, in the format's own error shape."""

    async def before(self, request: web.Request, ctx: RequestContext, body: B) -> web.StreamResponse | None:
        """A response that replaces generation (Ollama's empty-prompt load / unload), or ``None``."""
        return None

    def after(self, service: Service, body: B, dispatched: Dispatched) -> None:
        """Work once a target answers, before any byte is sent (Ollama's keep_alive); must not raise."""


def gateway(request: web.Request) -> Service:
    return request.app[GATEWAY]


async def serve(request: web.Request, front: Front[B]) -> web.StreamResponse:
    """The serve loop every generating endpoint shares."""
    ctx = context(request)
    request_headers(request, ctx, front.traffic)
    ctx.cache_control = request.headers.get("Cache-Control")
    body = front.parse(await read_json(request))
    replaced = await front.before(request, ctx, body)
    if replaced is not None:
        return replaced
    service = gateway(request)
    dispatched = await service.generate(ctx, body.model, front.canonical(body), body.cache)
    front.after(service, body, dispatched)
    answer = front.answer(ctx, body, dispatched)
    headers = {**dispatched.headers(), "X-Request-Id": ctx.request_id}
    async with contextlib.aclosing(dispatched.events) as events:
        first = dispatched.first
        if isinstance(first, ErrorEvent):
            raise first.as_exception()
        if not body.stream:
            whole = await collect(first, events)
            return web.json_response(answer.whole(whole), headers=headers)
        return await _stream(request, answer, first, events, headers)


async def _stream(
    request: web.Request,
    answer: Answer,
    first: Event | None,
    events: AsyncGenerator[Event, None],
    headers: dict[str, str],
) -> web.StreamResponse:
    stream_headers = {"Content-Type": answer.content_type, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = web.StreamResponse(headers={**headers, **stream_headers})
    await response.prepare(request)
    event = first
    try:
        for frame in answer.opening():
            await response.write(frame)
        while event is not None:
            if isinstance(event, TextDelta):
                frames = answer.text(event)
            elif isinstance(event, ReasoningDelta):
                frames = answer.reasoning(event)
            elif isinstance(event, ToolCall):
                frames = answer.call(event)
            elif isinstance(event, Finish):
                frames = answer.finish(event)
            else:
                log.error("stream %s ended by an error: %s", headers["X-Request-Id"], event.message)
                frames = answer.error(event)
            for frame in frames:
                await response.write(frame)
            if isinstance(event, Finish | ErrorEvent):
                break
            event = await anext(events, None)
    except ConnectionError:
        log.info("client went away during stream %s; generation cancelled", headers["X-Request-Id"])
        return response
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
