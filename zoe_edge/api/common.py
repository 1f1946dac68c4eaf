"""What every front shares: reading a JSON body, pydantic errors as readable messages, app keys."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from zoe_edge import validation
from zoe_edge.access.budget import seconds_to_midnight
from zoe_edge.access.keys import ClientKey, KeyTable
from zoe_edge.cache.config import CacheControls
from zoe_edge.cache.service import ResponseCache
from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, TextDelta, ToolCall
from zoe_edge.config import Settings
from zoe_edge.errors import (
    Forbidden,
    InvalidRequest,
    NotImplementedHere,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    ZoeError,
)
from zoe_edge.gguf_info import GGUFError, GGUFInfo, read_gguf
from zoe_edge.registry import Registry
from zoe_edge.routing.dispatch import Dispatched, Dispatcher
from zoe_edge.routing.names import Resolved, registry_name, resolve_name
from zoe_edge.routing.routes import has_selection
from zoe_edge.supervisor import Supervisor
from zoe_edge.supervisor.planner import plan_entry
from zoe_edge.telemetry.sampler import Sampler
from zoe_edge.usage.observer import Observer
from zoe_edge.usage.record import UsageRecord

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
SAMPLER = web.AppKey("sampler", Sampler)
CACHE = web.AppKey("cache", ResponseCache)
# the last generation requests (served by, route, fallback reason), for the dashboard
RECENT_REQUESTS: web.AppKey[collections.deque[dict[str, Any]]] = web.AppKey("recent_requests")
KEYS = web.AppKey("keys", KeyTable)
OBSERVER = web.AppKey("observer", Observer)


class Lenient(BaseModel):
    # clients send fields we do not use (logit_bias, metadata, store, ...); accept and ignore them
    model_config = ConfigDict(extra="ignore")


def locality(dispatched: Dispatched) -> str:
    """Where an answer came from, for the ledger and the metrics: local, cloud or cache."""
    if dispatched.cache == "hit":
        return "cache"
    return "local" if dispatched.served_by.local else "cloud"


async def open_generation(
    request: web.Request, name: str, req: GenerationRequest, cache: CacheControls | None = None
) -> Dispatched:
    """Route ``name`` and start the generation (or replay a cached answer); every front goes through here.

    Raises before anything is sent when no target can serve; the returned stream's first event
    has already been read, so a front can still choose its status code and headers. ``cache`` is
    the body's cache controls; the ``Cache-Control`` header is read here.
    """
    app = request.app
    rec: UsageRecord | None = request.get("zoe_usage")
    if rec is not None:
        rec.requested = registry_name(app[REGISTRY], name)
    observer = app.get(OBSERVER)
    resolved, local_only = await resolve(request, name, req)
    plan = resolved.plan
    req = req.model_copy(update={"model": resolved.name})
    if rec is not None:
        rec.route = plan.route
    # the key's permissions were checked above, so a key that may not use a model gets none of its cached answers
    looked = await app[CACHE].lookup(plan, req, cache, request.headers.get("Cache-Control"))
    request["zoe_cache"] = looked.status
    # a hit replays the stored answer and never calls dispatch: no supervisor, no upstream
    # an error from here on still tells the client which route it took (and which target failed)
    request["zoe_route"] = {"x-zoe-route": plan.reason}
    try:
        dispatched = await app[CACHE].open(
            looked,
            plan,
            lambda: app[DISPATCHER].dispatch(
                plan, req, deadline_header(request), local_only, retry_after=seconds_to_midnight(time.time())
            ),
        )
    except ZoeError as exc:
        if exc.target is not None:
            request["zoe_route"] = {"x-zoe-route": plan.reason, "x-zoe-served-by": exc.target}
        raise
    request["zoe_model"] = dispatched.served_by.label
    request["zoe_route"] = dispatched.headers()
    log.info("route %s -> %s (cache %s: %s)", plan.reason, dispatched.served_by.label, looked.status, looked.reason)
    if rec is not None and observer is not None:
        rec.target = dispatched.served_by.label
        rec.locality = locality(dispatched)
        rec.skipped = [skip.kind for skip in dispatched.skipped]
        rec.fallback_reason = dispatched.fallback_reason()
        rec.ttft_ms = round((time.perf_counter() - rec.started) * 1000, 3)
        if isinstance(dispatched.first, Finish):
            # an empty answer: the first event is the last, so the row is committed before any byte is sent
            rec.add_usage(dispatched.first.usage)
            rec.status = 200
            await observer.finish(rec, request.get("zoe_cache"))
        else:
            dispatched.events = observer.wrap(rec, dispatched.events, lambda: request.get("zoe_cache"))
    return dispatched


async def resolve(request: web.Request, name: str, req: GenerationRequest | None = None) -> tuple[Resolved, str | None]:
    """Every path that names a model comes through here: the one resolver, under the key's rules.

    The key's checks run first, on the registry name (``name`` or ``name:latest``): 403 for a name the
    key may not use (an unknown one included, so a limited key learns no other names), 429 over its
    rpm / tpm, each such request counted. Returns the resolution and, when the key is over its daily
    budget, why it must stay local.
    """
    app = request.app
    registry = app[REGISTRY]
    canonical = registry_name(registry, name)
    key: ClientKey | None = request.get("zoe_key")
    observer = app.get(OBSERVER)
    local_only = check_key(observer, key, canonical) if key is not None and observer is not None else None
    fits: dict[str, bool] | None = None
    sizes: dict[str, int] | None = None
    if has_selection(registry, canonical):
        fits, sizes = await fit_map(app[SUPERVISOR])
    return resolve_name(registry, name, req, fits, sizes), local_only


def check_key(observer: Observer, key: ClientKey, name: str) -> str | None:
    """Carry out a key's rules for asking for ``name``: 403, 429, or why it must stay local (budget)."""
    if not key.may_use(name):
        raise Forbidden(f"key {key.id!r} may not use {name!r}", param="model", code="model_not_allowed")
    now = time.time()
    decision = observer.limiter.decide(key.id, now, key.rpm, key.tpm)
    if not decision.allow:
        observer.metrics.rate_limited.labels(key.id, "tpm" if "tokens" in decision.reason else "rpm").inc()
        raise TooManyRequests(
            f"key {key.id!r}: {decision.reason}; retry in {decision.retry_after:.0f} s",
            code="rate_limit_exceeded",
            retry_after=max(1.0, decision.retry_after),
        )
    return observer.spend.over_budget(key, now)


async def fit_map(supervisor: Supervisor) -> tuple[dict[str, bool], dict[str, int]]:
    """Whether each registry model fits the current profile (as if swapped in), and its file size.

    For routes that select by score. :func:`read_gguf` parses a header once per file version.
    """

    def headers() -> dict[str, GGUFInfo | None]:
        out: dict[str, GGUFInfo | None] = {}
        for model in supervisor.registry.models:
            try:
                out[model] = read_gguf(supervisor.model_file(model))
            except (GGUFError, OSError, ValueError):
                out[model] = None
        return out

    fits: dict[str, bool] = {}
    sizes: dict[str, int] = {}
    for model, info in (await asyncio.to_thread(headers)).items():
        if info is None:
            fits[model] = False
            continue
        replacing = supervisor.model is not None and supervisor.model != model
        fits[model] = plan_entry(model, supervisor.registry.models[model], info, supervisor.budget(replacing)).fits
        sizes[model] = info.size_bytes
    return fits, sizes


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


async def no_embeddings(request: web.Request) -> web.Response:
    """Embeddings need a model loaded in embedding mode, which the single slot does not keep."""
    raise NotImplementedHere(
        "embeddings are not offered: the registry's models are loaded for generation only, and the single "
        "model slot does not keep a second, embedding-mode context"
    )


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


@dataclass
class Collected:
    text: str
    calls: list[ToolCall]
    finish: Finish


async def collect(first: Event | None, events: AsyncGenerator[Event, None]) -> Collected:
    """A whole answer for a non-streaming response; an error event becomes the exception it stands for."""
    parts: list[str] = []
    calls: list[ToolCall] = []
    event = first
    while event is not None:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, ToolCall):
            calls.append(event)
        elif isinstance(event, ErrorEvent):
            raise event.as_exception()
        elif isinstance(event, Finish):
            return Collected("".join(parts), calls, event)
        event = await anext(events, None)
    raise ZoeError("the generation ended without a result")


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
