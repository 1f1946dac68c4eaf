"""A loopback fake of OpenAI's chat-completions API (and the legacy completions endpoint).

Speaks the wire format the ``openai`` SDK parses: ``chat.completion`` objects, and SSE streams of
``chat.completion.chunk`` objects whose tool calls arrive as argument fragments by index, a usage
chunk with ``choices: []`` when ``stream_options.include_usage`` is set, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.common import FakeReply, FakeServer, maybe_sleep, pieces, sse

ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


class OpenAIFake(FakeServer):
    """``url`` is the base URL an OpenAI client wants (``.../v1``)."""

    def __init__(self, *, api_key: str | None = None) -> None:
        super().__init__(api_key=api_key)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/completions", self._completions)

    @property
    def url(self) -> str:
        return self.root + "/v1"

    async def __aenter__(self) -> OpenAIFake:
        await self.start()
        return self

    # -- wire pieces

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        kind, code = ERROR_TYPES.get(status, ("server_error", None))
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return web.json_response(body, status=status)

    @staticmethod
    def usage(reply: FakeReply) -> dict[str, Any]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    @staticmethod
    def finish_reason(reply: FakeReply) -> str:
        return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")

    @staticmethod
    def call_ids(reply: FakeReply) -> list[str]:
        return [c.id or f"call_{uuid.uuid4().hex[:24]}" for c in reply.tool_calls]

    @staticmethod
    def arguments(reply: FakeReply, i: int) -> str:
        if i == 0 and reply.raw_arguments is not None:
            return reply.raw_arguments
        return json.dumps(reply.tool_calls[i].arguments)

    # -- handlers

    async def _serve(self, request: web.Request, legacy: bool) -> web.StreamResponse:
        body = await self._record(request)
        auth = request.headers.get("Authorization", "")
        gated = await self._gate(request, self.error, lambda: auth == f"Bearer {self.api_key}")
        if gated is not None:
            return gated
        reply = self._next()
        await maybe_sleep(reply.delay)
        model = str(body.get("model") or "fake-model")
        if not body.get("stream") or reply.whole:
            return web.json_response(self._whole(reply, model, legacy))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = self._chunks(reply, model, include_usage, legacy)
        error = sse({"error": {"message": "injected mid-stream failure", "type": "server_error", "code": None}})
        return await self._send_frames(request, frames, reply, malformed=b"data: {not json\n\n", error_frame=error)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, legacy=False)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, legacy=True)

    def _whole(self, reply: FakeReply, model: str, legacy: bool) -> dict[str, Any]:
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}
        if legacy:
            choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": self.finish_reason(reply)}
            return {**head, "object": "text_completion", "choices": [choice], "usage": self.usage(reply)}
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": c.name, "arguments": self.arguments(reply, i)}}
                for i, (cid, c) in enumerate(zip(self.call_ids(reply), reply.tool_calls, strict=True))
            ]
        return {
            **head,
            "object": "chat.completion",
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason(reply)}],
            "usage": self.usage(reply),
            **reply.extra,
        }

    def _chunks(self, reply: FakeReply, model: str, include_usage: bool, legacy: bool) -> list[bytes]:
        head: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion" if legacy else "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }

        def chunk(choice_fields: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, **choice_fields, "logprobs": None, "finish_reason": finish}
            extra = {"usage": None} if include_usage else {}
            return sse({**head, "choices": [choice], **extra})

        frames: list[bytes] = []
        if legacy:
            frames += [chunk({"text": p}) for p in pieces(reply.text, reply.text_chunk)]
            frames.append(chunk({"text": ""}, self.finish_reason(reply)))
        else:
            frames.append(chunk({"delta": {"role": "assistant", "content": "", "refusal": None}}))
            frames += [chunk({"delta": {"content": p}}) for p in pieces(reply.text, reply.text_chunk)]
            for i, (cid, call) in enumerate(zip(self.call_ids(reply), reply.tool_calls, strict=True)):
                start = {"index": i, "id": cid, "type": "function", "function": {"name": call.name, "arguments": ""}}
                frames.append(chunk({"delta": {"tool_calls": [start]}}))
                for frag in pieces(self.arguments(reply, i), reply.args_chunk):
                    frames.append(chunk({"delta": {"tool_calls": [{"index": i, "function": {"arguments": frag}}]}}))
            frames.append(chunk({"delta": {}}, self.finish_reason(reply)))
        if include_usage:
            frames.append(sse({**head, "choices": [], "usage": self.usage(reply), **reply.extra}))
        frames.append(b"data: [DONE]\n\n")
        return frames
