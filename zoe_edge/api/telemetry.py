"""Telemetry over HTTP: ``GET /api/telemetry`` (snapshot + history), ``/api/telemetry/stream`` (SSE)
and the dashboard page at ``/dashboard`` with its two static files.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from zoe_edge.api.common import RECENT_REQUESTS, SAMPLER, SUPERVISOR, context, parse_seconds
from zoe_edge.errors import ModelNotFound
from zoe_edge.telemetry.sampler import Sampler

STATIC_DIR = Path(__file__).resolve().parent / "static"
# the only files /dashboard/static serves (no paths from the client reach the filesystem)
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# the page may talk to this daemon only: no CDN, no fonts, no beacons
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
KEEPALIVE_S = 15.0
RECENT_SWAPS = 10
RECENT_REQUESTS_SHOWN = 20


def daemon_figures(app: web.Application) -> Callable[[], dict[str, Any]]:
    """What the sampler adds to each sample from the supervisor: model, state, queue, speed, swaps."""

    def figures() -> dict[str, Any]:
        supervisor = app[SUPERVISOR]
        status = supervisor.status()
        slot = status["slot"]
        models = status.get("models") or {}
        recent: collections.deque[dict[str, Any]] | None = app.get(RECENT_REQUESTS)
        requests = list(recent or [])[-RECENT_REQUESTS_SHOWN:]
        return {
            "model": supervisor.loaded,
            "slot_model": slot.get("model"),
            "state": supervisor.state.value,
            "since": slot.get("since"),
            "busy_with": slot.get("busy_with"),
            "pid": slot.get("pid"),
            "worker_rss_mb": slot.get("worker_rss_mb"),
            "plan": slot.get("plan"),
            "idle_unload_in_s": slot.get("idle_unload_in_s"),
            "queue": status["queue"]["length"],
            "queue_by_model": status["queue"]["by_model"],
            "queue_by_priority": status["queue"].get("by_priority") or {},
            "scheduling": status.get("scheduling"),
            "tokens_per_s": supervisor.last_tokens_per_s,
            "requests": sum(int(m.get("requests") or 0) for m in models.values()),
            "models": models,
            "recent_requests": requests,
            "fallbacks": sum(1 for r in recent or [] if r.get("fallback")),
            "swaps": len(supervisor.swaps),
            "recent_swaps": list(supervisor.swaps)[-RECENT_SWAPS:],
            "failures": status.get("failures") or {},
            "last_error": status.get("last_error"),
            "memory_reserve_mb": status["memory"]["reserve_mb"],
            "usable_mb": status["memory"]["usable_mb"],
            "profile": status["profile"].get("name"),
        }

    return figures


def _seconds(request: web.Request) -> float | None:
    return parse_seconds(request.query.get("seconds"), "seconds")


async def telemetry(request: web.Request) -> web.Response:
    """The newest sample in full and the history (compact), ``?seconds=N`` for the last N seconds."""
    sampler = request.app[SAMPLER]
    seconds = _seconds(request)
    return web.json_response(
        {
            "source": sampler.source.name if sampler.source else None,
            "reason": sampler.reason,
            "interval_s": sampler.interval_s,
            "capacity": sampler.capacity,
            "snapshot": sampler.snapshot(),
            "history": sampler.history(seconds),
        }
    )


def sse_event(sample: dict[str, Any]) -> bytes:
    data = json.dumps(sample, separators=(",", ":"))
    return f"id: {sample.get('seq', '')}\ndata: {data}\n\n".encode()


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the newest sample at once, then one event per sample until shutdown."""
    sampler = request.app[SAMPLER]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-Id": context(request).request_id,
        }
    )
    queue = sampler.subscribe()
    try:
        await response.prepare(request)
        await response.write(f"retry: {round(max(1.0, sampler.interval_s) * 2000)}\n\n".encode())
        latest = sampler.snapshot()
        if latest is not None:
            await response.write(sse_event(latest))
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:  # shutting down
                break
            await response.write(sse_event(item))
    except ConnectionError:
        pass  # the dashboard was closed
    finally:
        sampler.unsubscribe(queue)
    return response


def _page(name: str, content_type: str) -> web.Response:
    body = (STATIC_DIR / name).read_bytes()
    return web.Response(
        body=body,
        content_type=content_type,
        charset="utf-8",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def dashboard(request: web.Request) -> web.Response:
    return _page("dashboard.html", "text/html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise ModelNotFound(f"no such file: {request.path}", code="unknown_url")
    return _page(name, ASSETS[name])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/telemetry", telemetry)
    app.router.add_get("/api/telemetry/stream", stream)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/dashboard/static/{name}", asset)


async def telemetry_lifetime(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: sample while the app runs; the tegrastats child goes with it."""
    sampler = app[SAMPLER]
    await sampler.start()
    yield
    await sampler.close()


async def end_streams(app: web.Application) -> None:
    """on_shutdown: finish open SSE streams before the server waits for in-flight requests."""
    app[SAMPLER].end_streams()


def record_request(request: web.Request, status: int, started: float) -> None:
    """Remember a generation request for the dashboard (called by the access-log middleware)."""
    recent: collections.deque[dict[str, Any]] | None = request.app.get(RECENT_REQUESTS)
    ctx = context(request)
    served_by = ctx.served_by
    if recent is None or served_by is None:
        return
    route = ctx.route_headers
    recent.append(
        {
            "at": time.time(),
            "path": request.path,
            "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "served_by": served_by,
            "route": route.get("x-zoe-route"),
            "fallback": route.get("x-zoe-fallback-reason"),
        }
    )


def setup(app: web.Application, sampler: Sampler) -> None:
    app[SAMPLER] = sampler
    app[RECENT_REQUESTS] = collections.deque(maxlen=50)
    add_routes(app)
    app.cleanup_ctx.append(telemetry_lifetime)
    app.on_shutdown.append(end_streams)
