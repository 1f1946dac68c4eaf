"""The Ollama wire format, as Home Assistant's ``ollama`` integration drives it through ``ollama.AsyncClient``.

The only place that knows Ollama JSON: NDJSON streams, ``name:tag`` model names, tool-call
arguments as objects, durations in nanoseconds, errors as ``{"error": "..."}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from aiohttp import web
from pydantic import Field, ValidationError, field_validator

from zoe_edge import __version__
from zoe_edge.api.common import (
    REGISTRY,
    SETTINGS,
    SUPERVISOR,
    Lenient,
    collect,
    no_embeddings,
    open_generation,
    parse_body,
    read_json,
    resolve,
)
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import (
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
)
from zoe_edge.errors import InvalidRequest, ModelNotFound, ZoeError
from zoe_edge.gguf_info import GGUFError, GGUFInfo, read_gguf
from zoe_edge.registry import Registry, model_path, parse_duration
from zoe_edge.routing.dispatch import header_text
from zoe_edge.routing.names import Resolved, registry_name, resolve_name
from zoe_edge.supervisor.planner import ContextDecision
from zoe_edge.supervisor.slot import SERVED_CONTEXT

log = logging.getLogger("zoe_edge.api")

# what Ollama version we answer as: recent enough for every client feature we implement
OLLAMA_VERSION = "0.12.0"
NDJSON = "application/x-ndjson"
FOREVER = datetime(2318, 1, 1, tzinfo=timezone.utc)  # Ollama's own "never expires" is far in the future


def error_response(exc: ZoeError) -> web.Response:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else {}
    return web.json_response({"error": exc.message}, status=exc.status, headers=headers)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def context_headers(decision: ContextDecision | None) -> dict[str, str]:
    """``x-zoe-context``: the context a local generation was served at, and why (``num_ctx`` honoured or not)."""
    if decision is None:
        return {}
    return {"x-zoe-context": str(decision.n_ctx), "x-zoe-context-reason": header_text(decision.reason)}


# --- requests ---------------------------------------------------------------------------------


class Options(Lenient):
    num_ctx: int | None = Field(default=None, ge=0)
    num_predict: int | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | None = None
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

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

    def max_tokens(self) -> int | None:
        # Ollama: -1 = until the model stops, -2 = fill the context; both mean "no cap of our own"
        return self.num_predict if self.num_predict is not None and self.num_predict > 0 else None


class FunctionIn(Lenient):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCallIn(Lenient):
    function: FunctionIn


class MessageIn(Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None
    images: list[Any] | None = None
    thinking: str | None = None

    @field_validator("images")
    @classmethod
    def _no_images(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("images are not supported by the local models")
        return value

    def to_canonical(self) -> Message:
        calls = [ToolCallRef(name=c.function.name, arguments=c.function.arguments) for c in self.tool_calls or []]
        return Message(
            role=self.role,
            content=self.content or "",
            name=self.tool_name if self.role == "tool" else None,
            tool_calls=calls if self.role == "assistant" and calls else None,
        )


class FunctionDef(Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class _Common(Lenient):
    model: str = Field(min_length=1, max_length=256)
    stream: bool = True
    options: Options = Field(default_factory=Options)
    format: Literal["", "json"] | dict[str, Any] | None = None
    keep_alive: int | float | str | None = None
    think: bool | str | None = None  # accepted; the local models do not think out loud
    cache: CacheControls | None = None  # response cache controls, as in the OpenAI dialect

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _no_bool_keep_alive(cls, value: Any) -> Any:
        # pydantic would read true as 1 s; Ollama refuses a boolean, and so does openapi.yaml
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 300, '5m' or -1, not a boolean")
        return value

    def constraint(self) -> OutputConstraint | None:
        if self.format == "json":
            return OutputConstraint(kind="json")
        if isinstance(self.format, dict):
            return OutputConstraint(kind="json_schema", json_schema=self.format)
        return None

    def keep_alive_seconds(self) -> tuple[bool, float | None]:
        """(given, seconds); ``None`` seconds means keep loaded until told otherwise."""
        if self.keep_alive is None:
            return False, None
        try:
            return True, parse_duration(self.keep_alive)
        except ValueError:
            raise InvalidRequest(f"keep_alive: not a duration: {self.keep_alive!r}", param="keep_alive") from None


class ChatRequest(_Common):
    messages: list[MessageIn] = Field(default_factory=list)
    tools: list[ToolDef] | None = None

    def to_canonical(self) -> GenerationRequest:
        tools = [
            Tool(
                name=t.function.name,
                description=t.function.description or "",
                parameters=t.function.parameters or {"type": "object", "properties": {}},
            )
            for t in self.tools or []
        ]
        return GenerationRequest(
            model=self.model,
            messages=[m.to_canonical() for m in self.messages],
            max_tokens=self.options.max_tokens(),
            stop=self.options.stop or [],
            sampling=self.options.sampling(),
            constraint=self.constraint(),
            tools=tools,
            stream=self.stream,
            n_ctx=self.options.num_ctx or None,
        )


class GenerateRequest(_Common):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    images: list[Any] | None = None

    def to_canonical(self) -> GenerationRequest:
        if self.images:
            raise InvalidRequest("images are not supported by the local models", param="images")
        common: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.options.max_tokens(),
            "stop": self.options.stop or [],
            "sampling": self.options.sampling(),
            "constraint": self.constraint(),
            "stream": self.stream,
            "n_ctx": self.options.num_ctx or None,
        }
        if self.raw:
            return GenerationRequest(prompt=self.prompt, **common)
        messages = [Message(role="system", content=self.system)] if self.system else []
        messages.append(Message(role="user", content=self.prompt))
        return GenerationRequest(messages=messages, **common)


# --- model listings ---------------------------------------------------------------------------


def _listed_model(registry: Registry, name: str) -> str | None:
    """The local model a listed registry name stands for (the one resolver, no key: a listing names none)."""
    try:
        return resolve_name(registry, name).model
    except ModelNotFound:  # a route whose select rule has no candidate: listed, with no facts
        return None


async def _resolve_known(request: web.Request, name: str, req: GenerationRequest | None = None) -> Resolved:
    """:func:`resolve` under the key's rules; an unknown name is Ollama's ``model '...' not found``."""
    try:
        resolved, _ = await resolve(request, name, req)
    except ModelNotFound:
        registry = request.app[REGISTRY]
        if registry_name(registry, name) in registry.names():
            raise  # a known name that cannot resolve now says why
        raise ModelNotFound(f"model '{name}' not found") from None
    return resolved


def _facts(request: web.Request, model: str | None) -> tuple[GGUFInfo | None, float]:
    if model is None:
        return None, 0.0
    settings = request.app[SETTINGS]
    entry = request.app[REGISTRY].models[model]
    try:
        path = model_path(entry, settings.registry_path.resolve().parent, settings.state_dir)
        return read_gguf(path), path.stat().st_mtime
    except (GGUFError, OSError, ValueError):
        return None, 0.0


def _details(info: GGUFInfo | None) -> dict[str, Any]:
    if info is None:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "",
            "families": None,
            "parameter_size": "",
            "quantization_level": "",
        }
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": info.parameter_size,
        "quantization_level": info.file_type,
    }


def _digest(info: GGUFInfo | None, mtime: float) -> str:
    # an identity digest (path, size, mtime), not a content hash: hashing gigabytes per listing is not worth it
    seed = f"{info.path}:{info.size_bytes}:{mtime}" if info else "missing"
    return hashlib.sha256(seed.encode()).hexdigest()


def _entry(request: web.Request, name: str) -> dict[str, Any]:
    info, mtime = _facts(request, _listed_model(request.app[REGISTRY], name))
    modified = datetime.fromtimestamp(mtime, timezone.utc) if mtime else datetime.now(timezone.utc)
    return {
        "name": f"{name}:latest",
        "model": f"{name}:latest",
        "modified_at": modified.isoformat(),
        "size": info.size_bytes if info else 0,
        "digest": _digest(info, mtime),
        "details": _details(info),
    }


async def tags(request: web.Request) -> web.Response:
    return web.json_response({"models": [_entry(request, n) for n in request.app[REGISTRY].names()]})


async def ps(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    model = supervisor.loaded
    if model is None:
        return web.json_response({"models": []})
    entry = _entry(request, model)
    plan = supervisor.plan
    size = plan.total_bytes if plan else entry["size"]
    on_gpu = plan is not None and plan.gpu_layers > 0
    idle = supervisor.idle_unload_at()
    now = datetime.now(timezone.utc)
    # a keep_alive of 1e12 s is "for ever" too: past FOREVER, datetime itself would overflow
    far = idle is None or idle >= (FOREVER - now).total_seconds()
    expires = FOREVER if far or idle is None else now + timedelta(seconds=max(0.0, idle))
    entry.update(
        {
            "size": size,
            "size_vram": size if on_gpu else 0,
            "expires_at": expires.isoformat(),
            "context_length": request.app[REGISTRY].models[model].n_ctx,
        }
    )
    return web.json_response({"models": [entry]})


async def show(request: web.Request) -> web.Response:
    body = await read_json(request)
    raw = str(body.get("model") or body.get("name") or "") if isinstance(body, dict) else ""
    resolved = await _resolve_known(request, raw)
    registry = request.app[REGISTRY]
    name, model = resolved.name, resolved.model
    info, mtime = _facts(request, model)
    entry = registry.models[model] if model else None
    model_info: dict[str, Any] = {}
    if info is not None:
        arch = info.architecture
        model_info = {
            "general.architecture": arch,
            "general.parameter_count": info.n_params,
            f"{arch}.context_length": info.context_length,
            f"{arch}.block_count": info.n_layers,
            f"{arch}.embedding_length": info.embedding_length,
            f"{arch}.attention.head_count": info.n_heads,
            f"{arch}.attention.head_count_kv": info.n_kv_heads,
        }
    parameters = f"num_ctx {entry.n_ctx}" if entry else ""
    return web.json_response(
        {
            "modelfile": f"# served by zoe-edge {__version__} from models.yaml\nFROM {name}\n",
            "parameters": parameters,
            "template": "",
            "details": _details(info),
            "model_info": model_info,
            "capabilities": ["completion", "tools"],
            "modified_at": datetime.fromtimestamp(mtime or time.time(), timezone.utc).isoformat(),
        }
    )


async def pull(request: web.Request) -> web.StreamResponse:
    """Nothing is downloaded: a registered name answers success, anything else a clear error."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    name = str(body.get("model") or body.get("name") or "")
    registry = request.app[REGISTRY]
    try:
        await resolve(request, name)  # the key's rules first: a limited key learns no other names
    except ModelNotFound:
        if registry_name(registry, name) in registry.names():
            raise
        listed = ", ".join(f"{n}:latest" for n in registry.names())
        raise ModelNotFound(
            f"pull model manifest: {name!r} is not in models.yaml, and zoe-edge does not download models. "
            f"Choose one of the models it serves ({listed}), or copy the model's GGUF file onto this machine "
            f"and add it to models.yaml under models: (a name with file: <path to the .gguf>), then restart "
            f"zoe-edge and choose that name"
        ) from None
    steps = [{"status": "pulling manifest"}, {"status": "verifying sha256 digest"}, {"status": "success"}]
    if body.get("stream") is False:
        return web.json_response(steps[-1])
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    for step in steps:
        await response.write(json.dumps(step).encode() + b"\n")
    await response.write_eof()
    return response


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION})


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


# --- generation -------------------------------------------------------------------------------


class _Final:
    """The last line's counters, Ollama-style: nanoseconds, evaluated (not cached) prompt tokens."""

    def __init__(self, started: float) -> None:
        self.started = started

    def fields(self, finish: Finish) -> dict[str, Any]:
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


def _call(call: ToolCall) -> dict[str, Any]:
    # objects, not strings: Home Assistant iterates the arguments with .items()
    return {"function": {"name": call.name, "arguments": call.arguments}}


async def _lifecycle_only(request: web.Request, body: ChatRequest | GenerateRequest, kind: str) -> web.Response:
    """Empty messages / prompt: load the model (or unload it with keep_alive 0), generate nothing.

    The name resolves as a generation's would (``auto`` applies its rules to what the body has), under
    the same key rules; a name whose targets are all cloud models has nothing to load here.
    """
    try:
        req: GenerationRequest | None = body.to_canonical()
    except (ValidationError, InvalidRequest):
        req = None  # what the body would generate does not matter for a load; the name still resolves
    model = (await _resolve_known(request, body.model, req)).model
    supervisor = request.app[SUPERVISOR]
    given, seconds = body.keep_alive_seconds()
    if given and seconds == 0:
        if model is not None and supervisor.loaded == model:
            await supervisor.unload()
        reason = "unload"
    else:
        if model is not None:
            await supervisor.load(model)
            if given:
                supervisor.set_keep_alive(model, seconds)
        reason = "load"
    out: dict[str, Any] = {"model": body.model, "created_at": _now(), "done": True, "done_reason": reason}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return web.json_response(out)


async def _generate(request: web.Request, kind: Literal["chat", "generate"]) -> web.StreamResponse:
    started = time.perf_counter()
    raw = await read_json(request)
    body: ChatRequest | GenerateRequest = (
        parse_body(ChatRequest, raw) if kind == "chat" else parse_body(GenerateRequest, raw)
    )
    empty = not body.messages if isinstance(body, ChatRequest) else not body.prompt
    if empty:
        return await _lifecycle_only(request, body, kind)
    try:
        canonical = body.to_canonical()
    except ValidationError as exc:
        # a combination the canonical request refuses (format with tools): the client's mistake, a 400
        problem = exc.errors(include_url=False)[0]["msg"]
        raise InvalidRequest(problem.removeprefix("Value error, "), code="invalid_value") from None
    given, seconds = body.keep_alive_seconds()
    SERVED_CONTEXT.set(None)  # set again by the supervisor if the slot serves this request
    dispatched = await open_generation(request, body.model, canonical, body.cache)
    if given and dispatched.served_by.local:
        request.app[SUPERVISOR].set_keep_alive(dispatched.served_by.model, seconds)
    final = _Final(started)

    def line(payload: dict[str, Any]) -> dict[str, Any]:
        return {"model": body.model, "created_at": _now(), **payload}

    def piece(text: str = "", calls: list[ToolCall] | None = None) -> dict[str, Any]:
        if kind == "generate":
            return {"response": text}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [_call(c) for c in calls]
        return {"message": message}

    events = dispatched.events
    headers = dispatched.headers()
    if dispatched.served_by.local and dispatched.cache != "hit":
        headers.update(context_headers(SERVED_CONTEXT.get()))
    async with contextlib.aclosing(events):
        first = dispatched.first
        if isinstance(first, ErrorEvent):
            raise first.as_exception()
        if not body.stream:
            whole = await collect(first, events)
            out = line({**piece(whole.text, whole.calls), **final.fields(whole.finish)})
            return web.json_response(out, headers=headers)
        return await _stream(request, first, events, line, piece, final, headers)


async def _stream(
    request: web.Request,
    first: Event | None,
    events: AsyncGenerator[Event, None],
    line: Any,
    piece: Any,
    final: _Final,
    headers: dict[str, str],
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "Content-Type": NDJSON})
    await response.prepare(request)

    async def send(payload: dict[str, Any]) -> None:
        await response.write(json.dumps(payload, ensure_ascii=False).encode() + b"\n")

    event = first
    try:
        while event is not None:
            if isinstance(event, TextDelta):
                await send(line({**piece(event.text), "done": False}))
            elif isinstance(event, ToolCall):
                await send(line({**piece("", [event]), "done": False}))
            elif isinstance(event, Finish):
                await send(line({**piece(""), **final.fields(event)}))
                break
            elif isinstance(event, ErrorEvent):
                log.error("ollama stream ended by an error: %s", event.message)
                await send({"error": event.message})
                break
            event = await anext(events, None)
    except ConnectionError:
        log.info("client went away during an Ollama stream; generation cancelled")
        return response
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "generate")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)  # aiohttp answers HEAD for GET routes
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", no_embeddings)
    app.router.add_post("/api/embeddings", no_embeddings)
