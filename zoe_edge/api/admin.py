"""The owner's API: what the slot is doing, and load/unload by registry name (never by path)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from aiohttp import web

from zoe_edge.api.common import CACHE, CONFIG, GATEWAY, OBSERVER, RELOADER, SUPERVISOR, context, registry_of
from zoe_edge.errors import InvalidRequest, ModelNotFound, RegistryError, ServiceUnavailable
from zoe_edge.routing.names import registry_name
from zoe_edge.routing.routes import has_selection, route_selections
from zoe_edge.usage import query


@contextlib.contextmanager
def _known(request: web.Request) -> Iterator[str]:
    """The path's model name; an unknown one is a 404 that lists the registry's names."""
    name = request.match_info["name"]
    registry = registry_of(request.app)
    try:
        yield name
    except ModelNotFound:
        if registry_name(registry, name) in registry.names():
            raise
        available = ", ".join(registry.names())
        raise ModelNotFound(f"{name!r} is not in the registry. Available: {available}", param="name") from None


async def status(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    registry = registry_of(request.app)
    body: dict[str, Any] = supervisor.status()
    body["registry"] = {
        "default": registry.default_model,
        "models": {
            name: {
                "aliases": registry.aliases_of(name),
                # the bench's scores, as `zoe-edge bench --write` stored them
                "bench": {suite: record.model_dump() for suite, record in entry.bench.items()},
            }
            for name, entry in registry.models.items()
        },
    }
    selecting = {name: route for name, route in registry.routes.items() if has_selection(registry, name)}
    if selecting:
        fits, sizes = await request.app[GATEWAY].fit_map()
        body["selections"] = {
            name: [asdict(s) for s in route_selections(registry, route, fits, sizes)]
            for name, route in selecting.items()
        }
    body["cache"] = request.app[CACHE].status()
    observer = request.app[OBSERVER]
    body["ledger"] = observer.ledger.status() if observer.ledger is not None else {"enabled": False}
    # ids and limits only: a key (or its digest) never leaves the daemon
    body["keys"] = {
        key.id: {
            "role": key.role,
            "aliases": sorted(key.aliases),
            "rpm": key.rpm,
            "tpm": key.tpm,
            "daily_budget_usd": key.daily_budget_usd,
            "spent_today_usd": round(observer.spend.spent.get(key.id, 0.0), 6),
        }
        for key in request.app[CONFIG].keys.keys
    }
    body["config"] = request.app[CONFIG].status()
    return web.json_response(body)


async def reload(request: web.Request) -> web.Response:
    """Reread models.yaml: 200 with what changed, or 422 with one line per problem (the running config stays)."""
    try:
        done = await request.app[RELOADER].reload()
    except RegistryError as exc:
        return web.json_response(
            {"error": {"message": str(exc), "type": "invalid_request_error", "param": None, "code": "invalid_config"},
             "problems": exc.problems},
            status=422,
        )
    change = done.change
    return web.json_response(
        {
            "digest": done.digest,
            "reason": change.reason,
            "added": change.added,
            "removed": change.removed,
            "changed": change.changed_models,
            "providers_changed": change.changed_providers,
            "restart_needed": change.restart_needed,
            "unloading": change.unload,
        }
    )


async def usage(request: web.Request) -> web.Response:
    """``?since=24h|ISO date|epoch&group_by=key|model|route|day`` totals, or the rows themselves (``limit``)."""
    ledger = request.app[OBSERVER].ledger
    if ledger is None:
        raise ServiceUnavailable("the usage ledger is disabled (usage.enabled: false in the registry)")
    now = time.time()
    try:
        since = query.parse_since(request.query.get("since"), now)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    group_by = request.query.get("group_by")
    if group_by is not None and group_by not in query.GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(query.GROUPS)}", param="group_by")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        limit = -1
    if not 1 <= limit <= 10000:
        raise InvalidRequest("limit must be a whole number from 1 to 10000", param="limit")
    body: dict[str, Any] = {"since": since, "ledger": ledger.status()}
    try:
        if group_by is not None:
            body["group_by"] = group_by
            body["groups"] = await ledger.read(lambda conn: query.summarize(conn, since, group_by))
        else:
            body["rows"] = await ledger.read(lambda conn: query.recent_rows(conn, since, limit))
    except (sqlite3.Error, OSError) as exc:
        raise ServiceUnavailable(f"cannot read the usage ledger: {exc}", retry_after=5) from None
    return web.json_response(body)


async def load(request: web.Request) -> web.Response:
    with _known(request) as name:
        model = await request.app[GATEWAY].load(context(request), name, require_local=True)
    plan = request.app[SUPERVISOR].plan
    return web.json_response({"loaded": model, "plan": plan.as_dict() if plan else None})


async def unload(request: web.Request) -> web.Response:
    with _known(request) as name:
        was = await request.app[GATEWAY].unload(context(request), name, require_local=True)
    return web.json_response({"unloaded": was, "loaded": request.app[SUPERVISOR].loaded})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/status", status)
    app.router.add_get("/admin/usage", usage)
    app.router.add_post("/admin/reload", reload)
    app.router.add_post("/admin/models/{name}/load", load)
    app.router.add_post("/admin/models/{name}/unload", unload)
