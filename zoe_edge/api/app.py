"""The aiohttp application: wiring of fronts, middlewares and the supervisor's lifetime."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from zoe_edge import __version__
from zoe_edge.api import admin, openai
from zoe_edge.api.common import REGISTRY, SETTINGS, SUPERVISOR
from zoe_edge.api.middlewares import api_key_auth, request_context
from zoe_edge.config import Settings
from zoe_edge.registry import Registry
from zoe_edge.supervisor import SlotState, Supervisor

log = logging.getLogger("zoe_edge")


async def health(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Says nothing about the model (that is /ready)."""
    return web.json_response({"status": "ok", "version": __version__})


async def ready(request: web.Request) -> web.Response:
    """Ready when the default model is loaded, or its file is present and a valid GGUF."""
    supervisor = request.app[SUPERVISOR]
    model = request.app[REGISTRY].default_model
    if supervisor.loaded == model and supervisor.state in (SlotState.READY, SlotState.BUSY):
        return web.json_response({"status": "ready", "model": model, "loaded": True})
    problem = await supervisor.check_loadable(model)
    if problem is None:
        return web.json_response({"status": "ready", "model": model, "loaded": False})
    return web.json_response({"status": "unavailable", "model": model, "loaded": False, "reason": problem}, status=503)


def build_app(settings: Settings, registry: Registry) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[request_context, api_key_auth])
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[SUPERVISOR] = Supervisor(registry, settings.registry_path.resolve().parent, settings)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    openai.add_routes(app)
    admin.add_routes(app)
    app.cleanup_ctx.append(_supervisor_lifetime)
    return app


async def _supervisor_lifetime(app: web.Application) -> AsyncIterator[None]:
    supervisor = app[SUPERVISOR]
    # preload in the background: the socket listens at once and /ready tells when the model is in
    preload = asyncio.create_task(supervisor.start())
    yield
    preload.cancel()
    await asyncio.gather(preload, return_exceptions=True)
    await supervisor.close()


async def serve(settings: Settings, registry: Registry) -> None:
    """Run until SIGINT/SIGTERM; in-flight requests get a grace period to finish."""
    app = build_app(settings, registry)
    # cancel the handler when its client disconnects, so an abandoned generation frees the model
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=10.0)
    await site.start()
    for address in runner.addresses:
        log.info("zoe-edge %s listening on http://%s:%s", __version__, *address[:2])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
