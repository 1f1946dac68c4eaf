"""The owner's API: what the slot is doing, and load/unload by registry name (never by path)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from zoe_edge.api.common import REGISTRY, SUPERVISOR, fit_map
from zoe_edge.errors import ModelNotFound
from zoe_edge.registry import Registry
from zoe_edge.routing.routes import has_selection, route_selections


def _registry_model(registry: Registry, name: str) -> str:
    model = registry.lookup(name)
    if model is None:
        raise ModelNotFound(f"{name!r} is not in the registry. Available: {', '.join(registry.names())}", param="name")
    return model


async def status(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    registry = request.app[REGISTRY]
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
        fits, sizes = await fit_map(request.app[SUPERVISOR])
        body["selections"] = {
            name: [asdict(s) for s in route_selections(registry, route, fits, sizes)]
            for name, route in selecting.items()
        }
    return web.json_response(body)


async def load(request: web.Request) -> web.Response:
    model = _registry_model(request.app[REGISTRY], request.match_info["name"])
    plan = await request.app[SUPERVISOR].load(model)
    return web.json_response({"loaded": model, "plan": plan.as_dict()})


async def unload(request: web.Request) -> web.Response:
    model = _registry_model(request.app[REGISTRY], request.match_info["name"])
    supervisor = request.app[SUPERVISOR]
    if supervisor.loaded != model:
        return web.json_response({"unloaded": None, "loaded": supervisor.loaded})
    was = await supervisor.unload()
    return web.json_response({"unloaded": was, "loaded": supervisor.loaded})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/status", status)
    app.router.add_post("/admin/models/{name}/load", load)
    app.router.add_post("/admin/models/{name}/unload", unload)
