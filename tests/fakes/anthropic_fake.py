"""A loopback fake of Anthropic's Messages API (``POST /v1/messages``).

Speaks the wire format the ``anthropic`` SDK parses: ``message`` objects, and ``event:``+``data:``
streams (message_start, content_block_start/delta/stop with text_delta and input_json_delta
fragments, ping, message_delta with stop_reason and output usage, message_stop). Errors are
``{"type": "error", "error": {"type", "message"}}``; 529 is ``overloaded_error``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.common import FakeReply, FakeServer, maybe_sleep, pieces, sse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class AnthropicFake(FakeServer):
    """``url`` is the base URL the ``anthropic`` SDK wants (it appends ``/v1/messages``)."""

    def __init__(self, *, api_key: str | None = None) -> None:
        super().__init__(api_key=api_key)
        self.app.router.add_post("/v1/messages", self._messages)

    @property
    def url(self) -> str:
        return self.root

    async def __aenter__(self) -> AnthropicFake:
        await self.start()
        return self

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
        return web.json_response(body, status=status, headers={"request-id": f"req_{uuid.uuid4().hex[:24]}"})

    @staticmethod
    def stop_reason(reply: FakeReply) -> str:
        return reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")

    @staticmethod
    def stop_sequence(reply: FakeReply, body: dict[str, Any]) -> str | None:
        if AnthropicFake.stop_reason(reply) != "stop_sequence":
            return None
        stops = body.get("stop_sequences") or ["\n\n"]
        return str(stops[0])

    @staticmethod
    def ids(reply: FakeReply) -> list[str]:
        return [c.id or f"toolu_{uuid.uuid4().hex[:24]}" for c in reply.tool_calls]

    @staticmethod
    def arguments(reply: FakeReply, i: int) -> str:
        if i == 0 and reply.raw_arguments is not None:
            return reply.raw_arguments
        return json.dumps(reply.tool_calls[i].arguments)

    @staticmethod
    def usage(reply: FakeReply, output: int) -> dict[str, Any]:
        return {
            "input_tokens": reply.prompt_tokens - reply.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": reply.cached_tokens,
            "output_tokens": output,
        }

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        # the API takes a key as x-api-key; newer SDKs send it as a Bearer token instead
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        key = request.headers.get("x-api-key") or bearer
        gated = await self._gate(request, self.error, lambda: key == self.api_key)
        if gated is not None:
            return gated
        if not request.headers.get("anthropic-version"):
            return self.error(400, "anthropic-version: header is required")
        if not isinstance(body.get("max_tokens"), int):
            return self.error(400, "max_tokens: Field required")
        reply = self._next()
        await maybe_sleep(reply.delay)
        model = str(body.get("model") or "claude-fake")
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        if not body.get("stream") or reply.whole:
            return web.json_response(self._whole(reply, body, model, msg_id))
        frames = self._events(reply, body, model, msg_id)
        error = sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")
        malformed = b"event: content_block_delta\ndata: {not json\n\n"
        return await self._send_frames(request, frames, reply, malformed=malformed, error_frame=error)

    def _whole(self, reply: FakeReply, body: dict[str, Any], model: str, msg_id: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        for i, (tid, call) in enumerate(zip(self.ids(reply), reply.tool_calls, strict=True)):
            content.append(
                {"type": "tool_use", "id": tid, "name": call.name, "input": json.loads(self.arguments(reply, i))}
            )
        return {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": self.stop_reason(reply),
            "stop_sequence": self.stop_sequence(reply, body),
            "usage": self.usage(reply, reply.completion_tokens),
        }

    def _events(self, reply: FakeReply, body: dict[str, Any], model: str, msg_id: str) -> list[bytes]:
        def ev(kind: str, **fields: Any) -> bytes:
            return sse({"type": kind, **fields}, kind)

        start = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage(reply, 1),
        }
        frames = [ev("message_start", message=start)]
        index = 0
        if reply.text:
            frames.append(ev("content_block_start", index=index, content_block={"type": "text", "text": ""}))
            frames.append(ev("ping"))
            for p in pieces(reply.text, reply.text_chunk):
                frames.append(ev("content_block_delta", index=index, delta={"type": "text_delta", "text": p}))
            frames.append(ev("content_block_stop", index=index))
            index += 1
        for i, (tid, call) in enumerate(zip(self.ids(reply), reply.tool_calls, strict=True)):
            block = {"type": "tool_use", "id": tid, "name": call.name, "input": {}}
            frames.append(ev("content_block_start", index=index, content_block=block))
            if index == 0:
                frames.append(ev("ping"))
            # the real API opens each tool_use block with an empty fragment
            for frag in ["", *pieces(self.arguments(reply, i), reply.args_chunk)]:
                delta = {"type": "input_json_delta", "partial_json": frag}
                frames.append(ev("content_block_delta", index=index, delta=delta))
            frames.append(ev("content_block_stop", index=index))
            index += 1
        delta = {"stop_reason": self.stop_reason(reply), "stop_sequence": self.stop_sequence(reply, body)}
        frames.append(ev("message_delta", delta=delta, usage={"output_tokens": reply.completion_tokens}))
        frames.append(ev("message_stop"))
        return frames
