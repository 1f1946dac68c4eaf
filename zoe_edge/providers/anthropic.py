"""Anthropic's Messages API as an upstream: the only place that knows its wire format.

Request: system turns -> top-level ``system``; assistant calls -> ``tool_use`` blocks; tool results
-> ``tool_result`` blocks inside a user turn; consecutive same-role turns merged (the API wants
user/assistant alternation); ``max_tokens`` always set. Stream: ``message_start`` ...
``message_stop`` events -> canonical events, ``input_json_delta`` fragments assembled per block
into one complete :class:`ToolCall` at ``content_block_stop``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from zoe_edge.canonical import (
    ErrorEvent,
    Event,
    Finish,
    FinishReason,
    GenerationRequest,
    Message,
    TextDelta,
    ToolCall,
    Usage,
)
from zoe_edge.providers.base import (
    Provider,
    ProviderMalformed,
    load_json_object,
    parse_arguments,
    request_messages,
)

API_VERSION = "2023-06-01"

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "stop",
}

# Anthropic error types -> the status the same failure would have had before the first byte
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 502,
    "overloaded_error": 503,
}


def _tool_id(raw: str) -> str:
    # tool_use ids must match ^[a-zA-Z0-9_-]+$; ids from other providers may not
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw) or "call"


def _json_instruction(req: GenerationRequest) -> str | None:
    """The Messages API has no response_format: ask for JSON in the system prompt instead."""
    if req.constraint is None:
        return None
    if req.constraint.kind == "json_schema" and req.constraint.json_schema:
        schema = json.dumps(req.constraint.json_schema, ensure_ascii=False)
        return f"Respond with only a JSON value that matches this JSON schema, and nothing else:\n{schema}"
    return "Respond with only a JSON object, and nothing else."


def _blocks(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "tool_result", "tool_use_id": _tool_id(m.tool_call_id or ""), "content": m.content}]
    blocks: list[dict[str, Any]] = []
    if m.content:
        blocks.append({"type": "text", "text": m.content})  # empty text blocks are rejected
    for call in (m.tool_calls or []) if m.role == "assistant" else []:
        blocks.append({"type": "tool_use", "id": _tool_id(call.id), "name": call.name, "input": call.arguments})
    return blocks


def build_body(model: str, req: GenerationRequest, *, max_tokens_default: int = 1024) -> dict[str, Any]:
    """The ``/v1/messages`` body for ``req``, streaming."""
    messages = request_messages(req)
    system = [m.content for m in messages if m.role == "system" and m.content]
    instruction = _json_instruction(req)
    if instruction:
        system.append(instruction)
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        role = "assistant" if m.role == "assistant" else "user"  # tool results travel in user turns
        blocks = _blocks(m)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # the API wants a user turn's tool_result blocks before any text
        turn["content"].sort(key=lambda b: b["type"] != "tool_result")

    body: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens or max_tokens_default, "messages": turns}
    if system:
        body["system"] = "\n\n".join(system)
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    s = req.sampling
    if s.temperature is not None:
        body["temperature"] = min(s.temperature, 1.0)  # Anthropic's range is 0..1
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.top_k is not None:
        body["top_k"] = s.top_k
    body["stream"] = True

    if req.tools:
        body["tools"] = [
            {"name": t.name, **({"description": t.description} if t.description else {}), "input_schema": t.parameters}
            for t in req.tools
        ]
        choice = req.tool_choice
        modes: dict[str, dict[str, Any]] = {
            "auto": {"type": "auto"},
            "required": {"type": "any"},
            "none": {"type": "none"},
            "function": {"type": "tool", "name": choice.name},
        }
        tc = modes[choice.mode]
        if choice.mode != "none" and not req.parallel_tool_calls:
            tc["disable_parallel_tool_use"] = True
        body["tool_choice"] = tc
    else:
        # a history with tool_use blocks must declare those tools: declare them, forbid new calls
        used = {b["name"] for t in turns for b in t["content"] if b["type"] == "tool_use"}
        if used:
            body["tools"] = [{"name": n, "input_schema": {"type": "object"}} for n in sorted(used)]
            body["tool_choice"] = {"type": "none"}
    return body


@dataclass
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    json: list[str] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)


@dataclass
class _State:
    input_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    calls: int = 0

    def read_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if usage.get("input_tokens") is not None:
            self.input_tokens = int(usage["input_tokens"])
        if usage.get("cache_read_input_tokens") is not None:
            self.cache_read = int(usage["cache_read_input_tokens"])
        if usage.get("cache_creation_input_tokens") is not None:
            self.cache_write = int(usage["cache_creation_input_tokens"])
        if usage.get("output_tokens") is not None:
            self.output_tokens = int(usage["output_tokens"])

    def finish(self) -> Finish:
        # Anthropic's input_tokens leaves out cached tokens; OpenAI's prompt_tokens includes them
        prompt = self.input_tokens + self.cache_read + self.cache_write
        reason: FinishReason = STOP_REASONS.get(self.stop_reason or "end_turn", "stop")
        return Finish(reason, Usage(prompt, self.output_tokens, self.cache_read))


def error_event(body: dict[str, Any]) -> ErrorEvent:
    err = body.get("error")
    kind = str(err.get("type") or "api_error") if isinstance(err, dict) else "api_error"
    message = str(err.get("message") or kind) if isinstance(err, dict) else str(err)
    return ErrorEvent(f"the upstream reported {kind}: {message}", code=kind, status=ERROR_STATUS.get(kind, 502))


def _tool_call(block: _Block, index: int) -> ToolCall | ErrorEvent:
    text = "".join(block.json)
    args = parse_arguments(text, block.name) if text else block.input
    if isinstance(args, ErrorEvent):
        return args
    return ToolCall(index, block.id, block.name, args)


async def parse_events(events: AsyncIterator[tuple[str, str]]) -> AsyncGenerator[Event, None]:
    """Canonical events from a Messages API event stream."""
    state = _State()
    blocks: dict[int, _Block] = {}
    started = False
    async for name, data in events:
        payload = load_json_object(data, f"a {name or 'stream'} event")
        kind = payload.get("type") or name
        if kind == "ping":
            continue
        if kind == "error":
            yield error_event(payload)
            return
        if kind == "message_start":
            started = True
            message = payload.get("message")
            if isinstance(message, dict):
                state.read_usage(message.get("usage"))
        elif kind == "content_block_start":
            index = int(payload.get("index", len(blocks)))
            cb = payload.get("content_block") or {}
            block = _Block(str(cb.get("type")), str(cb.get("id") or ""), str(cb.get("name") or ""))
            if block.kind == "tool_use" and isinstance(cb.get("input"), dict):
                block.input = cb["input"]
            blocks[index] = block
            if block.kind == "text" and cb.get("text"):
                yield TextDelta(str(cb["text"]))
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            block = blocks.get(int(payload.get("index", -1)), _Block("unknown"))
            if delta.get("type") == "text_delta" and delta.get("text"):
                yield TextDelta(str(delta["text"]))
            elif delta.get("type") == "input_json_delta":
                if block.kind != "tool_use":
                    raise ProviderMalformed("input_json_delta for a block that is not a tool_use")
                block.json.append(str(delta.get("partial_json") or ""))
            # thinking_delta, signature_delta, citations: not part of the canonical stream
        elif kind == "content_block_stop":
            block = blocks.get(int(payload.get("index", -1)), _Block("unknown"))
            if block.kind == "tool_use":
                call = _tool_call(block, state.calls)
                state.calls += 1
                yield call
                if isinstance(call, ErrorEvent):
                    return
        elif kind == "message_delta":
            delta = payload.get("delta") or {}
            if delta.get("stop_reason"):
                state.stop_reason = str(delta["stop_reason"])
            state.read_usage(payload.get("usage"))
        elif kind == "message_stop":
            if not started:
                raise ProviderMalformed("message_stop without message_start")
            yield state.finish()
            return
    # the stream ended without message_stop: the caller reports it as incomplete


def parse_message(body: dict[str, Any]) -> list[Event]:
    """Canonical events from one non-streamed ``message`` object."""
    if body.get("type") == "error":
        return [error_event(body)]
    content = body.get("content")
    if body.get("type") != "message" or not isinstance(content, list):
        raise ProviderMalformed("the upstream's answer is not a message")
    state = _State(stop_reason=body.get("stop_reason"))
    state.read_usage(body.get("usage"))
    out: list[Event] = []
    for cb in content:
        if cb.get("type") == "text" and cb.get("text"):
            out.append(TextDelta(str(cb["text"])))
        elif cb.get("type") == "tool_use":
            args = cb.get("input")
            if not isinstance(args, dict):
                out.append(ErrorEvent("a tool_use input is not an object", "upstream_malformed", 502))
                return out
            out.append(ToolCall(state.calls, str(cb.get("id") or ""), str(cb.get("name") or ""), args))
            state.calls += 1
    out.append(state.finish())
    return out


class AnthropicProvider(Provider):
    """``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``."""

    def build_request(self, model: str, req: GenerationRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {"anthropic-version": API_VERSION, "Accept": "text/event-stream", **self.config.extra_headers}
        key = self.api_key()
        if key is not None:
            headers["x-api-key"] = key
        body = build_body(model, req, max_tokens_default=self.config.max_tokens_default)
        base = self.config.base_url
        url = base + "/messages" if base.endswith("/v1") else base + "/v1/messages"
        return url, headers, body

    def parse_stream(self, events: AsyncIterator[tuple[str, str]]) -> AsyncGenerator[Event, None]:
        return parse_events(events)

    def parse_whole(self, body: dict[str, Any]) -> list[Event]:
        return parse_message(body)

    def error_message(self, body: Any) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            return f"{err.get('type', 'error')}: {err.get('message', '')}"
        return None
