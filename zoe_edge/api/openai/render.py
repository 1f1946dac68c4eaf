"""Canonical events as OpenAI JSON and SSE: the only place that knows what OpenAI responses look like."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from aiohttp import web

from zoe_edge.api.front import Answer
from zoe_edge.canonical import ErrorEvent, Finish, ReasoningDelta, TextDelta, ToolCall
from zoe_edge.errors import ZoeError
from zoe_edge.service import Collected


def error_body(exc: ZoeError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def retry_headers(exc: ZoeError) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else {}


def error_response(exc: ZoeError) -> web.Response:
    return web.json_response(error_body(exc), status=exc.status, headers=retry_headers(exc))


def usage(finish: Finish) -> dict[str, Any]:
    u = finish.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def arguments(call: ToolCall) -> str:
    """Tool-call arguments as OpenAI sends them: a JSON-encoded string."""
    return json.dumps(call.arguments, ensure_ascii=False)


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class OpenAIAnswer(Answer):
    """The two OpenAI response families differ only in names and where the text goes."""

    def __init__(
        self,
        kind: Literal["chat", "completion"],
        model: str,
        legacy_functions: bool = False,
        include_usage: bool = False,
    ) -> None:
        self.kind = kind
        self.model = model
        self.legacy_functions = legacy_functions
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.opened = False  # a chat stream's first delta carries the role

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def finish_reason(self, finish: Finish) -> str:
        # a cancelled generation has no client left to read this; "stop" keeps the field in OpenAI's set
        reason = "stop" if finish.reason == "cancelled" else finish.reason
        return "function_call" if reason == "tool_calls" and self.legacy_functions else reason

    def _calls(self, calls: list[ToolCall], *, with_index: bool) -> dict[str, Any]:
        """The message/delta fields that carry calls: ``tool_calls``, or legacy ``function_call``."""
        if self.legacy_functions:
            return {"function_call": {"name": calls[0].name, "arguments": arguments(calls[0])}}
        out = []
        for call in calls:
            item: dict[str, Any] = {"index": call.index} if with_index else {}
            item.update(
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments(call)}}
            )
            out.append(item)
        return {"tool_calls": out}

    def whole(self, answer: Collected) -> dict[str, Any]:
        text, finish, calls = answer.text, answer.finish, answer.calls
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if answer.reasoning:
                # as llama.cpp's server and DeepSeek's API: thinking beside the answer, never in it
                message["reasoning_content"] = answer.reasoning
            if calls:
                # OpenAI sends null content beside calls; text before a call is kept when there is some
                message["content"] = text if text.strip() else None
                message.update(self._calls(calls, with_index=False))
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": self.finish_reason(finish),
            }
            body = self._envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish_reason(finish)}
            body = self._envelope("text_completion", [choice])
        body["usage"] = usage(finish)
        body["timings"] = finish.timings.per_second(finish.usage)
        return body

    def _chunk(
        self, text: str | None, finish_reason: str | None, call: ToolCall | None = None, reasoning: str | None = None
    ) -> bytes:
        first, self.opened = not self.opened, True
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if reasoning is not None:
                delta["reasoning_content"] = reasoning
            if call is not None:
                # each call whole in one delta: Home Assistant's home-llm does not stitch fragments
                delta.update(self._calls([call], with_index=True))
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return sse(self._envelope("chat.completion.chunk", [choice]))
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return sse(self._envelope("text_completion", [choice]))

    def text(self, delta: TextDelta) -> list[bytes]:
        return [self._chunk(delta.text, None)]

    def reasoning(self, delta: ReasoningDelta) -> list[bytes]:
        if self.kind != "chat":
            return []  # a text completion has no field for it
        return [self._chunk(None, None, reasoning=delta.text)]

    def call(self, call: ToolCall) -> list[bytes]:
        return [self._chunk(None, None, call=call)]

    def finish(self, finish: Finish) -> list[bytes]:
        frames = [self._chunk(None if self.opened else "", self.finish_reason(finish))]
        if self.include_usage:
            body = self._envelope("chat.completion.chunk" if self.kind == "chat" else "text_completion", [])
            body["usage"] = usage(finish)
            frames.append(sse(body))
        frames.append(sse("[DONE]"))
        return frames

    def error(self, event: ErrorEvent) -> list[bytes]:
        return [sse(error_body(event.as_exception()))]
