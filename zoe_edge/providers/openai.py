"""Any OpenAI-compatible upstream (OpenAI, OpenRouter, vLLM, llama.cpp's server, another zoe-edge).

The only place that knows the *upstream* side of OpenAI's chat-completions wire format: it builds
the request body from a canonical request and turns the SSE chunk stream back into canonical
events. (``zoe_edge.api.openai`` is the other direction: it serves that format to clients.)
"""

from __future__ import annotations

import json
import uuid
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
    Timings,
    ToolCall,
    Usage,
)
from zoe_edge.providers.base import Provider, ProviderMalformed, load_json_object, parse_arguments, request_messages

FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "stop",
    "eos": "stop",
}


def build_body(model: str, req: GenerationRequest, *, sampling_extensions: bool = False) -> dict[str, Any]:
    """The ``/chat/completions`` (or, for a raw prompt, ``/completions``) body for ``req``, streaming."""
    body: dict[str, Any] = {"model": model}
    if req.messages is None:
        body["prompt"] = req.prompt or ""
    else:
        body["messages"] = [_message(m) for m in request_messages(req)]
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.stop:
        body["stop"] = list(req.stop)
    s = req.sampling
    standard = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "seed": s.seed,
    }
    body.update({k: v for k, v in standard.items() if v is not None})
    if sampling_extensions:
        extended = {"top_k": s.top_k, "min_p": s.min_p, "repeat_penalty": s.repeat_penalty}
        body.update({k: v for k, v in extended.items() if v is not None})
    if req.tools and req.messages is not None:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in req.tools
        ]
        choice = req.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if choice.mode == "function" else choice.mode
        )
        if req.uses_tools:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.constraint is not None and req.messages is not None:
        if req.constraint.kind == "json":
            body["response_format"] = {"type": "json_object"}
        else:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": req.constraint.json_schema or {}},
            }
    return body


def _message(m: Message) -> dict[str, Any]:
    if m.role == "assistant" and m.tool_calls:
        return {
            "role": "assistant",
            "content": m.content or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
                }
                for c in m.tool_calls
            ],
        }
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    return out


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(cached or 0),
    )


def _error_event(body: dict[str, Any]) -> ErrorEvent:
    err = body.get("error")
    if isinstance(err, dict):
        message = str(err.get("message") or err)
        code = err.get("code") or err.get("type")
        status = err.get("status") if isinstance(err.get("status"), int) else None
    else:
        message, code, status = str(err), None, None
    if status is None:
        kind = err.get("type") if isinstance(err, dict) else None
        if code in ("rate_limit_exceeded", "rate_limit_error") or kind in ("requests", "rate_limit_error"):
            status = 429
        else:
            status = 503 if kind == "service_unavailable" else 502
    return ErrorEvent(f"the upstream reported an error: {message}", code=str(code or "upstream_error"), status=status)


def _complete_calls(pending: dict[int, _PendingCall]) -> list[Event]:
    """Each assembled call once, arguments parsed; a call with broken arguments becomes an ErrorEvent."""
    out: list[Event] = []
    for n, key in enumerate(sorted(pending)):
        call = pending[key]
        args = parse_arguments("".join(call.arguments), call.name)
        if isinstance(args, ErrorEvent):
            return [*out, args]
        if not call.name:
            return [*out, ErrorEvent("the upstream sent a tool call without a name", "upstream_malformed", 502)]
        out.append(ToolCall(n, call.id or f"call_{uuid.uuid4().hex[:24]}", call.name, args))
    return out


def _timings(raw: Any) -> Timings | None:
    """llama.cpp-style ``timings`` (llama.cpp's server, another zoe-edge), when the upstream sends them."""
    if not isinstance(raw, dict):
        return None
    try:
        return Timings(prompt_ms=float(raw.get("prompt_ms") or 0), predicted_ms=float(raw.get("predicted_ms") or 0))
    except (TypeError, ValueError):
        return None


def _finish(reason: str | None, calls: bool, usage: Usage | None, timings: Timings | None = None) -> Finish:
    mapped: FinishReason = FINISH_REASONS.get(reason or "stop", "stop")
    if calls and mapped == "stop":
        mapped = "tool_calls"  # some servers say "stop" after a call
    return Finish(mapped, usage or Usage(0, 0), timings or Timings())


async def parse_chunks(events: AsyncIterator[tuple[str, str]]) -> AsyncGenerator[Event, None]:
    """Canonical events from an OpenAI SSE chunk stream (chat or legacy completions)."""
    pending: dict[int, _PendingCall] = {}
    reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    async for _, data in events:
        if data.strip() == "[DONE]":
            break
        chunk = load_json_object(data, "a stream chunk")
        if "error" in chunk and chunk["error"] is not None:
            yield _error_event(chunk)
            return
        usage = _usage(chunk.get("usage")) or usage
        timings = _timings(chunk.get("timings")) or timings
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ProviderMalformed("a stream chunk's 'choices' is not a list")
        for choice in choices[:1]:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {"content": choice.get("text")}  # /completions chunks carry "text"
            text = delta.get("content")
            if text:
                yield TextDelta(str(text))
            for i, frag in enumerate(delta.get("tool_calls") or []):
                index = frag.get("index", i)
                call = pending.setdefault(int(index), _PendingCall())
                call.id = frag.get("id") or call.id
                fn = frag.get("function") or {}
                call.name = fn.get("name") or call.name
                if fn.get("arguments"):
                    call.arguments.append(str(fn["arguments"]))
            if choice.get("finish_reason"):
                reason = str(choice["finish_reason"])
    else:
        if reason is None:
            return  # cut before the end: the caller reports the incomplete stream
    for event in _complete_calls(pending):
        yield event
        if isinstance(event, ErrorEvent):
            return
    yield _finish(reason, bool(pending), usage, timings)


def parse_completion(body: dict[str, Any]) -> list[Event]:
    """Canonical events from one non-streamed ``chat.completion`` (or ``text_completion``) object."""
    if body.get("error") is not None:
        return [_error_event(body)]
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProviderMalformed("the upstream's answer has no choices")
    choice = choices[0]
    message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    if "message" not in choice:
        message = {"content": choice.get("text")}  # text_completion
    out: list[Event] = []
    if message.get("content"):
        out.append(TextDelta(str(message["content"])))
    pending = {
        i: _PendingCall(
            id=c.get("id") or "",
            name=(c.get("function") or {}).get("name") or "",
            arguments=[str((c.get("function") or {}).get("arguments") or "")],
        )
        for i, c in enumerate(message.get("tool_calls") or [])
    }
    calls = _complete_calls(pending)
    out.extend(calls)
    if calls and isinstance(calls[-1], ErrorEvent):
        return out
    out.append(
        _finish(choice.get("finish_reason"), bool(pending), _usage(body.get("usage")), _timings(body.get("timings")))
    )
    return out


class OpenAIProvider(Provider):
    """``POST {base_url}/chat/completions`` with ``stream: true`` and a Bearer key."""

    def build_request(self, model: str, req: GenerationRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        path = "/chat/completions" if req.messages is not None else "/completions"
        headers = {"Accept": "text/event-stream", **self.config.extra_headers}
        key = self.api_key()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        body = build_body(model, req, sampling_extensions=self.config.sampling_extensions)
        return self.config.base_url + path, headers, body

    def parse_stream(self, events: AsyncIterator[tuple[str, str]]) -> AsyncGenerator[Event, None]:
        return parse_chunks(events)

    def parse_whole(self, body: dict[str, Any]) -> list[Event]:
        return parse_completion(body)

    def error_message(self, body: Any) -> str | None:
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict) and err.get("message"):
                return str(err["message"])
            if isinstance(err, str):
                return err
        return None
