"""Canonical events as Anthropic Messages JSON and SSE: the only place that knows what Anthropic answers look
like (checked against the ``anthropic`` SDK's types and its stream accumulator)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from aiohttp import web

from zoe_edge.api.front import Answer
from zoe_edge.canonical import ErrorEvent, Finish, ReasoningDelta, TextDelta, ToolCall, Usage
from zoe_edge.errors import ZoeError
from zoe_edge.service import Collected

# Anthropic's error types by status; what is not here is invalid_request_error below 500, api_error above
_ERROR_TYPES = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    # the local slot busy or shutting down: the SDK retries an overloaded answer, as it should here; the
    # status stays 503 (with Retry-After) so the retry waits, only the type says what Anthropic would
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(exc: ZoeError, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type(exc.status), "message": exc.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_response(exc: ZoeError, request_id: str | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else {}
    if request_id is not None:
        headers["request-id"] = request_id
    return web.json_response(error_body(exc, request_id), status=exc.status, headers=headers)


StopReason = Literal["end_turn", "max_tokens", "tool_use"]


def stop_reason(finish: Finish) -> StopReason:
    # a cancelled generation has no client left to read this; the stream never says which stop sequence
    # matched, so a stop on one reads as end_turn (stop_sequence stays null)
    if finish.reason == "length":
        return "max_tokens"
    if finish.reason == "tool_calls":
        return "tool_use"
    return "end_turn"


def usage(u: Usage) -> dict[str, int]:
    """Anthropic counts input apart from cache reads (total input = input + cache read + cache creation);
    the prompt tokens the slot reused from its KV prefix (or a provider read from its cache) are the reads."""
    return {
        "input_tokens": u.prompt_tokens - u.cached_tokens,
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def tool_use(call: ToolCall, with_input: bool = True) -> dict[str, Any]:
    block_id = call.id or new_tool_id()
    return {"type": "tool_use", "id": block_id, "name": call.name, "input": call.arguments if with_input else {}}


def new_tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def sse(event: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n".encode()


def frame(payload: dict[str, Any]) -> bytes:
    """Every Anthropic stream event names its type twice: as the SSE event and in the data."""
    return sse(str(payload["type"]), payload)


# a thinking block's signature proves to Anthropic that Claude wrote it; a local model's thinking has none
NO_SIGNATURE = ""

BlockKind = Literal["text", "thinking"]


class AnthropicAnswer(Answer):
    """One message; a stream opens a content block per run of text or thinking and one per tool call."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "msg_" + uuid.uuid4().hex[:24]
        self.index = -1  # the content block the stream is in
        self.open: BlockKind | None = None

    def _message(self, content: list[dict[str, Any]], reason: StopReason | None, u: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": None,
            "usage": usage(u),
        }

    def whole(self, answer: Collected) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if answer.reasoning:
            content.append({"type": "thinking", "thinking": answer.reasoning, "signature": NO_SIGNATURE})
        if answer.text:
            content.append({"type": "text", "text": answer.text})
        content += [tool_use(call) for call in answer.calls]
        return self._message(content, stop_reason(answer.finish), answer.finish.usage)

    def opening(self) -> list[bytes]:
        # input tokens are known only at the end; message_delta carries them (the SDK takes them from there)
        start = self._message([], None, Usage(0, 0))
        return [frame({"type": "message_start", "message": start}), frame({"type": "ping"})]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        frames = []
        if self.open == "thinking":
            signature = {"type": "signature_delta", "signature": NO_SIGNATURE}
            frames.append(frame({"type": "content_block_delta", "index": self.index, "delta": signature}))
        self.open = None
        frames.append(frame({"type": "content_block_stop", "index": self.index}))
        return frames

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        frames = self._close()
        self.index += 1
        frames.append(frame({"type": "content_block_start", "index": self.index, "content_block": block}))
        return frames

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return frame({"type": "content_block_delta", "index": self.index, "delta": delta})

    def text(self, delta: TextDelta) -> list[bytes]:
        frames = []
        if self.open != "text":
            frames = self._start({"type": "text", "text": ""})
            self.open = "text"
        frames.append(self._delta({"type": "text_delta", "text": delta.text}))
        return frames

    def reasoning(self, delta: ReasoningDelta) -> list[bytes]:
        frames = []
        if self.open != "thinking":
            frames = self._start({"type": "thinking", "thinking": "", "signature": NO_SIGNATURE})
            self.open = "thinking"
        frames.append(self._delta({"type": "thinking_delta", "thinking": delta.text}))
        return frames

    def call(self, call: ToolCall) -> list[bytes]:
        # a call arrives whole: one input_json_delta carries all of its input
        frames = self._start(tool_use(call, with_input=False))
        partial = json.dumps(call.arguments, ensure_ascii=False)
        frames.append(self._delta({"type": "input_json_delta", "partial_json": partial}))
        frames.append(frame({"type": "content_block_stop", "index": self.index}))
        return frames

    def finish(self, finish: Finish) -> list[bytes]:
        frames = self._close()
        delta = {"stop_reason": stop_reason(finish), "stop_sequence": None}
        frames.append(frame({"type": "message_delta", "delta": delta, "usage": usage(finish.usage)}))
        frames.append(frame({"type": "message_stop"}))
        return frames

    def error(self, event: ErrorEvent) -> list[bytes]:
        return [sse("error", error_body(event.as_exception()))]
