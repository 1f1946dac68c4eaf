"""The OpenAI wire format: request models -> canonical request, canonical events -> responses.

This module is the only place that knows what OpenAI JSON and SSE look like.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zoe_edge.api.common import REGISTRY, SETTINGS, collect, no_embeddings, open_generation, parse_body, read_json
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import (
    TOOL_NAME,
    ErrorEvent,
    Event,
    Finish,
    GenerationRequest,
    Message,
    OutputConstraint,
    Sampling,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallRef,
    ToolChoice,
)
from zoe_edge.errors import InvalidRequest, ZoeError
from zoe_edge.registry import model_path

log = logging.getLogger("zoe_edge.api")

MAX_STOP = 16

# --- request models ---------------------------------------------------------------------------


class _Lenient(BaseModel):
    # clients send fields we do not use (logit_bias, metadata, store, ...); accept and ignore them
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class FunctionCallIn(_Lenient):
    name: str = Field(min_length=1)
    # OpenAI sends a JSON string; some clients send the object itself
    arguments: str | dict[str, Any] = ""

    def parsed_arguments(self, where: str) -> dict[str, Any]:
        if isinstance(self.arguments, dict):
            return self.arguments
        if not self.arguments.strip():
            return {}
        try:
            value = json.loads(self.arguments)
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise InvalidRequest(f"{where}: arguments must be a JSON object encoded as a string", param=where)
        return value


class ToolCallIn(_Lenient):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCallIn | None = None  # legacy form of one tool call

    def to_canonical(self, where: str) -> Message:
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        calls = [
            ToolCallRef(
                id=c.id, name=c.function.name, arguments=c.function.parsed_arguments(f"{where}.tool_calls[{i}]")
            )
            for i, c in enumerate(self.tool_calls or [])
        ]
        if self.function_call is not None:
            calls.append(
                ToolCallRef(
                    name=self.function_call.name,
                    arguments=self.function_call.parsed_arguments(f"{where}.function_call"),
                )
            )
        return Message(
            role=role,
            content=self.text(),
            name=self.name,
            tool_calls=calls if role == "assistant" and calls else None,
            tool_call_id=self.tool_call_id if role == "tool" else None,
        )

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDef(_Lenient):
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None

    def tool(self) -> Tool:
        params = self.parameters if self.parameters is not None else {"type": "object", "properties": {}}
        return Tool(name=self.name, description=self.description or "", parameters=params)


class ToolDef(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(_Lenient):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with a 'schema'")
        return self

    def constraint(self) -> OutputConstraint | None:
        if self.type == "json_object":
            return OutputConstraint(kind="json")
        if self.type == "json_schema":
            assert self.json_schema is not None
            return OutputConstraint(kind="json_schema", json_schema=self.json_schema.schema_)
        return None


class StreamOptions(_Lenient):
    include_usage: bool = False


class _CommonParams(_Lenient):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1, description="one choice per request: the model decodes one sequence")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    # llama.cpp-server extensions that OpenAI clients pass through extra_body
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    # LiteLLM-style response cache controls: {"no-cache": true, "no-store": true, "ttl": 60}
    cache: CacheControls | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value: Any) -> Any:
        # OpenAI accepts one string or a list; normalise before the type check
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences")
            if any(not s for s in value):
                raise ValueError("stop sequences must not be empty")
        return value

    def sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=None if self.seed is None else self.seed % 2**32,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_CommonParams):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = Field(default=None, description="legacy form of tools")
    function_call: Literal["auto", "none"] | NamedFunction | None = None

    @model_validator(mode="after")
    def _one_tool_style(self) -> ChatCompletionRequest:
        if self.tools and self.functions:
            raise ValueError("send either 'tools' or the legacy 'functions', not both")
        return self

    @property
    def legacy_functions(self) -> bool:
        """The client used ``functions``; it expects ``message.function_call`` back."""
        return bool(self.functions)

    def _tools(self) -> tuple[list[Tool], ToolChoice, bool]:
        if self.legacy_functions:
            assert self.functions is not None
            choice: Any = self.function_call
            tools = [f.tool() for f in self.functions]
            parallel = False  # function_call carries one call
        else:
            choice = self.tool_choice
            tools = [t.function.tool() for t in self.tools or []]
            # opt-in, as in llama.cpp's server: small models asked for "one or more" calls tend to
            # repeat the first one; a client that wants several says so
            parallel = self.parallel_tool_calls is True
        if isinstance(choice, NamedToolChoice | NamedFunction):
            name = choice.function.name if isinstance(choice, NamedToolChoice) else choice.name
            return tools, ToolChoice(mode="function", name=name), parallel
        return tools, ToolChoice(mode=choice or "auto"), parallel

    def to_canonical(self) -> GenerationRequest:
        messages = [m.to_canonical(f"messages[{i}]") for i, m in enumerate(self.messages)]
        tools, choice, parallel = self._tools()
        try:
            return GenerationRequest(
                model=self.model,
                messages=messages,
                max_tokens=self.max_completion_tokens or self.max_tokens,
                stop=self.stop or [],
                sampling=self.sampling(),
                constraint=self.response_format.constraint() if self.response_format else None,
                tools=tools,
                tool_choice=choice,
                parallel_tool_calls=parallel,
                stream=self.stream,
            )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            param = "tool_choice" if "tool" in first["msg"] else None
            raise InvalidRequest(
                first["msg"].removeprefix("Value error, "), param=param, code="invalid_value"
            ) from None


class CompletionRequest(_CommonParams):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    echo: Literal[False] = False
    suffix: None = None
    logprobs: None = None
    best_of: int = Field(default=1, ge=1, le=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send exactly one prompt per request")
        return value

    def to_canonical(self) -> GenerationRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GenerationRequest(
            model=self.model,
            prompt=prompt,
            max_tokens=self.max_tokens,
            stop=self.stop or [],
            sampling=self.sampling(),
            stream=self.stream,
        )


# --- rendering --------------------------------------------------------------------------------


def error_body(exc: ZoeError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_response(exc: ZoeError) -> web.Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return web.json_response(error_body(exc), status=exc.status, headers=headers)


def _usage(finish: Finish) -> dict[str, Any]:
    u = finish.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _finish_reason(finish: Finish) -> str:
    # a cancelled generation has no client left to read this; "stop" keeps the field in OpenAI's set
    return "stop" if finish.reason == "cancelled" else finish.reason


def _arguments(call: ToolCall) -> str:
    return json.dumps(call.arguments, ensure_ascii=False)


class _Shape:
    """The two OpenAI response families differ only in names and where the text goes."""

    def __init__(self, kind: Literal["chat", "completion"], model: str, legacy_functions: bool = False) -> None:
        self.kind = kind
        self.model = model
        self.legacy_functions = legacy_functions
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

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
        reason = _finish_reason(finish)
        return "function_call" if reason == "tool_calls" and self.legacy_functions else reason

    def _calls(self, calls: list[ToolCall], *, with_index: bool) -> dict[str, Any]:
        """The message/delta fields that carry calls: ``tool_calls``, or legacy ``function_call``."""
        if self.legacy_functions:
            return {"function_call": {"name": calls[0].name, "arguments": _arguments(calls[0])}}
        out = []
        for call in calls:
            item: dict[str, Any] = {"index": call.index} if with_index else {}
            item.update(
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": _arguments(call)}}
            )
            out.append(item)
        return {"tool_calls": out}

    def full(self, text: str, finish: Finish, calls: list[ToolCall] | None = None) -> dict[str, Any]:
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
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
        body["usage"] = _usage(finish)
        body["timings"] = finish.timings.per_second(finish.usage)
        return body

    def chunk(
        self, text: str | None, finish_reason: str | None, *, first: bool = False, call: ToolCall | None = None
    ) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if call is not None:
                # each call whole in one delta: Home Assistant's home-llm does not stitch fragments
                delta.update(self._calls([call], with_index=True))
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice])

    def usage_chunk(self, finish: Finish) -> dict[str, Any]:
        body = self._envelope("chat.completion.chunk" if self.kind == "chat" else "text_completion", [])
        body["usage"] = _usage(finish)
        return body


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# --- handlers ---------------------------------------------------------------------------------


async def _serve(
    request: web.Request,
    kind: Literal["chat", "completion"],
    parse: Callable[[Any], ChatCompletionRequest | CompletionRequest],
) -> web.StreamResponse:
    body = parse(await read_json(request))
    dispatched = await open_generation(request, body.model, body.to_canonical(), body.cache)
    shape = _Shape(kind, dispatched.served_by.model, isinstance(body, ChatCompletionRequest) and body.legacy_functions)
    headers = {**dispatched.headers(), "X-Request-Id": request["request_id"]}
    async with contextlib.aclosing(dispatched.events) as events:
        first = dispatched.first
        if isinstance(first, ErrorEvent):
            raise first.as_exception()
        if not body.stream:
            whole = await collect(first, events)
            return web.json_response(shape.full(whole.text, whole.finish, whole.calls), headers=headers)
        return await _stream(request, shape, first, events, headers, body.include_usage)


async def _stream(
    request: web.Request,
    shape: _Shape,
    first: Event | None,
    events: AsyncGenerator[Event, None],
    headers: dict[str, str],
    include_usage: bool,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    opened = False
    event = first
    try:
        while event is not None:
            if isinstance(event, TextDelta):
                await response.write(_sse(shape.chunk(event.text, None, first=not opened)))
                opened = True
            elif isinstance(event, ToolCall):
                await response.write(_sse(shape.chunk(None, None, first=not opened, call=event)))
                opened = True
            elif isinstance(event, Finish):
                await response.write(
                    _sse(shape.chunk(None if opened else "", shape.finish_reason(event), first=not opened))
                )
                if include_usage:
                    await response.write(_sse(shape.usage_chunk(event)))
                await response.write(_sse("[DONE]"))
                break
            elif isinstance(event, ErrorEvent):
                log.error("stream %s ended by an error: %s", shape.id, event.message)
                await response.write(_sse(error_body(event.as_exception())))
                break
            event = await anext(events, None)
    except (ConnectionResetError, ConnectionError):
        log.info("client went away during stream %s; generation cancelled", shape.id)
        return response
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "chat", lambda data: parse_body(ChatCompletionRequest, data))


async def completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "completion", lambda data: parse_body(CompletionRequest, data))


async def list_models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    settings = request.app[SETTINGS]
    registry_dir = settings.registry_path.resolve().parent
    created: dict[str, int] = {}
    for name, entry in registry.models.items():
        try:
            created[name] = int(model_path(entry, registry_dir, settings.state_dir).stat().st_mtime)
        except (OSError, ValueError):
            created[name] = 0
    data = [
        {"id": name, "object": "model", "created": created[name], "owned_by": "zoe-edge"} for name in registry.models
    ]
    data += [
        {"id": alias, "object": "model", "created": created[target], "owned_by": "zoe-edge", "parent": target}
        for alias, target in registry.aliases.items()
    ]
    # routes and the auto router are names a client can ask for too
    data += [{"id": name, "object": "model", "created": 0, "owned_by": "zoe-edge"} for name in registry.routes]
    if registry.auto is not None:
        data.append({"id": registry.auto.name, "object": "model", "created": 0, "owned_by": "zoe-edge"})
    return web.json_response({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_post(f"{prefix}/embeddings", no_embeddings)
