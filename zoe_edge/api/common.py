"""What every front shares: reading a JSON body, pydantic errors as readable messages, app and request keys."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoe_edge import validation
from zoe_edge.cache.service import ResponseCache
from zoe_edge.canonical import GenerationRequest, Priority, Sampling
from zoe_edge.config import Settings
from zoe_edge.errors import (
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
)
from zoe_edge.registry import Registry
from zoe_edge.routing import priority
from zoe_edge.routing.dispatch import Dispatcher
from zoe_edge.service import RequestContext, Service
from zoe_edge.service.config import LiveConfig
from zoe_edge.service.reload import Reloader
from zoe_edge.supervisor import Supervisor
from zoe_edge.telemetry.sampler import Sampler
from zoe_edge.usage.observer import Observer

SETTINGS = web.AppKey("settings", Settings)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
SAMPLER = web.AppKey("sampler", Sampler)
CACHE = web.AppKey("cache", ResponseCache)
# the last generation requests (served by, route, fallback reason), for the dashboard
RECENT_REQUESTS: web.AppKey[collections.deque[dict[str, Any]]] = web.AppKey("recent_requests")
# the registry and key table in force; a reload replaces them (zoe_edge.service.reload)
CONFIG = web.AppKey("config", LiveConfig)
RELOADER = web.AppKey("reloader", Reloader)
OBSERVER = web.AppKey("observer", Observer)
GATEWAY: web.AppKey[Service] = web.AppKey("gateway")
CONTEXT = web.RequestKey("context", RequestContext)


class Lenient(BaseModel):
    # clients send fields we do not use (logit_bias, metadata, store, ...); accept and ignore them
    model_config = ConfigDict(extra="ignore")


class SamplingFields(Lenient):
    """The sampling knobs OpenAI and Ollama bodies share (Ollama's under ``options``), with the same bounds."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    def sampling(self) -> Sampling:
        fields = self.model_dump(include=set(Sampling.model_fields))
        if self.seed is not None:
            fields["seed"] = self.seed % 2**32  # llama.cpp's seed is 32 bits; clients send up to 64
        return Sampling(**fields)


MAX_STOP = 16


def stop_limits(value: list[str] | None) -> list[str] | None:
    """Stop sequences as every front bounds them: a few, none empty (an empty one would stop at once)."""
    if value is not None:
        if len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
    return value


def parse_arguments(arguments: str | dict[str, Any], where: str) -> dict[str, Any]:
    """Tool-call arguments as OpenAI sends them (a JSON-encoded object), or the object some clients send."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: must be a JSON object encoded as a string", param=where)
    return value


def canonical_request(build: Callable[[], GenerationRequest], format_field: str | None = None) -> GenerationRequest:
    """The canonical request a body builds; a combination it refuses (a format with tools, a tool_choice naming
    no offered tool) is the client's mistake: a 400 naming the field. ``format_field``: how the front calls
    what the canonical request calls ``response_format``."""
    try:
        return build()
    except ValidationError as exc:
        msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        param = "tool_choice" if "tool" in msg else None
        if format_field is not None and "response_format" in msg:
            msg, param = f"{format_field}: {msg}", format_field
        raise InvalidRequest(msg, param=param, code="invalid_value") from None


def registry_of(app: web.Application) -> Registry:
    """The registry in force now (read per request, so a reload shows at once)."""
    return app[CONFIG].registry


def context(request: web.Request) -> RequestContext:
    """The request's typed context (made by the outermost middleware; made here for a front tested alone)."""
    ctx = request.get(CONTEXT)
    if ctx is None:
        ctx = request[CONTEXT] = RequestContext(request_id=request.headers.get("X-Request-Id", "") or "-")
    return ctx


M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("zoe_edge.api")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 413 over the configured size, 408 when it trickles in too slowly, 400 when
    it is not JSON."""
    limit = request.app[SETTINGS].body_timeout_s
    try:
        raw = await asyncio.wait_for(request.read(), limit)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {limit:g} s", code="request_timeout") from None
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(
            f"request body is larger than the {request.app[SETTINGS].max_body_bytes} byte limit",
            code="request_too_large",
        ) from exc
    if not raw.strip():
        raise InvalidRequest("request body is empty; send a JSON object", code="invalid_json")
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8", code="invalid_json") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    # JSON may escape a lone UTF-16 surrogate ("\ud800") that no UTF-8 text can hold: refused here, or it
    # would fail later where the prompt is encoded for the worker (a 500). Checked only when one may be there.
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                "request body is not valid text: it escapes a lone UTF-16 surrogate (\\ud800-\\udfff)",
                code="invalid_json",
            ) from None
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_seconds(raw: str | None, name: str) -> float | None:
    """A client-given number of seconds (a header or query value) in 0..86400, or ``None`` if absent."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise InvalidRequest(f"{name} must be a number of seconds between 0 and 86400", param=name)
    return value


def deadline_header(request: web.Request) -> float | None:
    """``X-Zoe-Deadline: <seconds>``: the longest this client will wait for the local model."""
    return parse_seconds(request.headers.get("X-Zoe-Deadline"), "X-Zoe-Deadline")


def priority_header(request: web.Request) -> Priority | None:
    """``X-Zoe-Priority: interactive|normal|background``: where this request queues for the local model;
    any other value is a 400 (in the caller's dialect) naming the allowed ones."""
    try:
        return priority.parse_priority(request.headers.get(priority.HEADER))
    except ValueError as exc:
        raise InvalidRequest(f"{priority.HEADER} {exc}", param=priority.HEADER, code="invalid_priority") from None


def request_headers(request: web.Request, ctx: RequestContext, traffic: priority.Traffic) -> None:
    """What every generating or embedding endpoint reads from the headers before the body: the deadline,
    the priority asked for and the front's traffic kind (the priority's default)."""
    ctx.deadline = deadline_header(request)
    ctx.requested_priority = priority_header(request)
    ctx.traffic = traffic


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_body(model: type[M], data: Any) -> M:
    """Validate a parsed body; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__}", code="invalid_type")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        found = validation.problems(exc)
        # the shortest location is the field the client actually sent, not a nested detail
        loc, msg = min(found, key=lambda p: len(p[0]))
        where = _field_path(loc)
        more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
        raise InvalidRequest(f"{where or 'body'}: {msg}{more}", param=where or None, code="invalid_value") from None
