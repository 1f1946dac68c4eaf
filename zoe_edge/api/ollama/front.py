"""The Ollama front: ``/api/chat`` and ``/api/generate`` over the generic serve loop, as Home Assistant's
``ollama`` integration drives them through ``ollama.AsyncClient``: NDJSON streams, tool-call arguments as
objects, durations in nanoseconds, errors as ``{"error": "..."}``."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Literal

from aiohttp import web
from pydantic import ValidationError

from zoe_edge.api.common import canonical_request, parse_body, registry_of
from zoe_edge.api.front import Answer, Front, gateway, serve
from zoe_edge.api.ollama import embed, listing
from zoe_edge.api.ollama.requests import ChatRequest, GenerateRequest
from zoe_edge.canonical import ErrorEvent, Finish, GenerationRequest, ReasoningDelta, TextDelta, ToolCall
from zoe_edge.errors import InvalidRequest, ZoeError
from zoe_edge.routing.dispatch import Dispatched
from zoe_edge.service import Collected, RequestContext, Service

Kind = Literal["chat", "generate"]


def error_response(exc: ZoeError) -> web.Response:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else {}
    return web.json_response({"error": exc.message}, status=exc.status, headers=headers)


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _call(call: ToolCall) -> dict[str, Any]:
    # objects, not strings: Home Assistant iterates the arguments with .items()
    return {"function": {"name": call.name, "arguments": call.arguments}}


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"


class OllamaAnswer(Answer):
    content_type = listing.NDJSON

    def __init__(self, kind: Kind, model: str, started: float) -> None:
        self.kind = kind
        self.model = model  # as the client named it
        self.started = started

    def _piece(self, text: str = "", calls: list[ToolCall] | None = None, thinking: str = "") -> dict[str, Any]:
        head: dict[str, Any] = {"model": self.model, "created_at": now()}
        # as Ollama: "thinking" only when there is some (the ollama client's types default it to None)
        if self.kind == "generate":
            return {**head, "response": text, **({"thinking": thinking} if thinking else {})}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [_call(c) for c in calls]
        return {**head, "message": message}

    def _final(self, finish: Finish) -> dict[str, Any]:
        """The last line's counters: nanoseconds, evaluated (not cached) prompt tokens."""
        u, t = finish.usage, finish.timings
        return {
            "done": True,
            "done_reason": "length" if finish.reason == "length" else "stop",
            "total_duration": int((time.perf_counter() - self.started) * 1e9),
            "load_duration": int(t.load_ms * 1e6),
            "prompt_eval_count": u.prompt_tokens - u.cached_tokens,
            "prompt_eval_duration": int(t.prompt_ms * 1e6),
            "eval_count": u.completion_tokens,
            "eval_duration": int(t.predicted_ms * 1e6),
        }

    def whole(self, answer: Collected) -> dict[str, Any]:
        return {**self._piece(answer.text, answer.calls, answer.reasoning), **self._final(answer.finish)}

    def text(self, delta: TextDelta) -> list[bytes]:
        return [_line({**self._piece(delta.text), "done": False})]

    def reasoning(self, delta: ReasoningDelta) -> list[bytes]:
        return [_line({**self._piece(thinking=delta.text), "done": False})]

    def call(self, call: ToolCall) -> list[bytes]:
        return [_line({**self._piece("", [call]), "done": False})]

    def finish(self, finish: Finish) -> list[bytes]:
        return [_line({**self._piece(""), **self._final(finish)})]

    def error(self, event: ErrorEvent) -> list[bytes]:
        return [_line({"error": event.message})]


class OllamaFront(Front[ChatRequest | GenerateRequest]):
    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        # /api/chat is Home Assistant's conversation agent (the voice path) and its AI Task entity
        self.traffic = "ollama-chat" if kind == "chat" else "ollama-generate"

    def error_response(self, exc: ZoeError) -> web.Response:
        return error_response(exc)

    def parse(self, data: Any) -> ChatRequest | GenerateRequest:
        return parse_body(ChatRequest, data) if self.kind == "chat" else parse_body(GenerateRequest, data)

    def canonical(self, body: ChatRequest | GenerateRequest) -> GenerationRequest:
        body.keep_alive_seconds()  # a bad keep_alive is a 400 before anything is routed
        return canonical_request(body.to_canonical)

    def answer(self, ctx: RequestContext, body: ChatRequest | GenerateRequest, dispatched: Dispatched) -> Answer:
        return OllamaAnswer(self.kind, body.model, ctx.started)

    def after(self, service: Service, body: ChatRequest | GenerateRequest, dispatched: Dispatched) -> None:
        given, seconds = body.keep_alive_seconds()
        if given and dispatched.served_by.local:
            service.keep_alive(dispatched.served_by.model, seconds)

    async def before(
        self, request: web.Request, ctx: RequestContext, body: ChatRequest | GenerateRequest
    ) -> web.StreamResponse | None:
        """Empty messages / prompt: load the model (or unload it with keep_alive 0), generate nothing.

        The name resolves as a generation's would (``auto`` applies its rules to what the body has), under
        the same key rules; a name whose targets are all cloud models has nothing to load here.
        """
        empty = not body.messages if isinstance(body, ChatRequest) else not body.prompt
        if not empty:
            return None
        try:
            req: GenerationRequest | None = body.to_canonical()
        except (ValidationError, InvalidRequest):
            req = None  # what the body would generate does not matter for a load; the name still resolves
        service = gateway(request)
        given, seconds = body.keep_alive_seconds()
        with listing.known_names(registry_of(request.app), body.model):
            if given and seconds == 0:
                await service.unload(ctx, body.model, req)
                reason = "unload"
            else:
                model = await service.load(ctx, body.model, req)
                if model is not None and given:
                    service.keep_alive(model, seconds)
                reason = "load"
        out: dict[str, Any] = {"model": body.model, "created_at": now(), "done": True, "done_reason": reason}
        if self.kind == "chat":
            out["message"] = {"role": "assistant", "content": ""}
        else:
            out["response"] = ""
        return web.json_response(out)


CHAT = OllamaFront("chat")
GENERATE = OllamaFront("generate")


async def chat(request: web.Request) -> web.StreamResponse:
    return await serve(request, CHAT)


async def generate(request: web.Request) -> web.StreamResponse:
    return await serve(request, GENERATE)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", listing.root)
    app.router.add_get("/api/version", listing.version)  # aiohttp answers HEAD for GET routes
    app.router.add_get("/api/tags", listing.tags)
    app.router.add_get("/api/ps", listing.ps)
    app.router.add_post("/api/show", listing.show)
    app.router.add_post("/api/pull", listing.pull)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed.embed)
    app.router.add_post("/api/embeddings", embed.embeddings)
