"""The aiohttp application: wiring of fronts, middlewares and the supervisor's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import yaml
from aiohttp import web

from zoe_edge import __version__
from zoe_edge.access.budget import SpendBook, day_start
from zoe_edge.access.keys import KeyTable
from zoe_edge.access.limits import Limiter
from zoe_edge.api import admin, anthropic, ollama, openai, responses, telemetry
from zoe_edge.api.common import (
    CACHE,
    CONFIG,
    DISPATCHER,
    GATEWAY,
    OBSERVER,
    RELOADER,
    SAMPLER,
    SETTINGS,
    SUPERVISOR,
    registry_of,
)
from zoe_edge.api.middlewares import (
    DRAIN,
    Drain,
    api_key_auth,
    cors_headers,
    cors_preflight,
    drain_guard,
    request_context,
)
from zoe_edge.cache.service import ResponseCache
from zoe_edge.config import Settings
from zoe_edge.errors import RegistryError
from zoe_edge.providers import make_provider
from zoe_edge.registry import Registry
from zoe_edge.routing.dispatch import Dispatcher
from zoe_edge.sdnotify import Notifier
from zoe_edge.service import Gateway
from zoe_edge.service.config import LiveConfig, digest_of
from zoe_edge.service.reload import Reloader
from zoe_edge.supervisor import SlotState, Supervisor
from zoe_edge.telemetry.policy import ThermalLimits
from zoe_edge.telemetry.sampler import Sampler
from zoe_edge.usage import query
from zoe_edge.usage.ledger import Ledger
from zoe_edge.usage.metrics import Metrics
from zoe_edge.usage.observer import Observer

log = logging.getLogger("zoe_edge")


async def health(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Says nothing about the model (that is /ready)."""
    return web.json_response({"status": "ok", "version": __version__})


async def ready(request: web.Request) -> web.Response:
    """Ready when the default model is loaded, or its file is present and a valid GGUF."""
    supervisor = request.app[SUPERVISOR]
    model = registry_of(request.app).default_model
    if supervisor.loaded == model and supervisor.state in (SlotState.READY, SlotState.BUSY):
        return web.json_response({"status": "ready", "model": model, "loaded": True})
    problem = await supervisor.check_loadable(model)
    if problem is None:
        return web.json_response({"status": "ready", "model": model, "loaded": False})
    return web.json_response({"status": "unavailable", "model": model, "loaded": False, "reason": problem}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; behind the API key like every client endpoint (key ids only in labels)."""
    body = request.app[OBSERVER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def ledger_path(settings: Settings, registry: Registry) -> Path:
    """``--usage-db`` / ``$ZOE_USAGE_DB``, else the registry's ``usage.path``, else ``<state_dir>/usage.sqlite3``."""
    if settings.usage_db is not None:
        return settings.usage_db
    if registry.usage.path:
        path = Path(os.path.expanduser(registry.usage.path))
        return path if path.is_absolute() else settings.registry_path.resolve().parent / path
    return settings.state_dir / "usage.sqlite3"
# the daemon's own API description, read once: the routes it documents are the routes build_app adds
OPENAPI = yaml.safe_load(resources.files("zoe_edge.api").joinpath("openapi.yaml").read_text(encoding="utf-8"))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def build_app(settings: Settings, registry: Registry) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_context, drain_guard, cors_preflight, api_key_auth],
    )
    app[SETTINGS] = settings
    app[DRAIN] = Drain()
    app.on_response_prepare.append(cors_headers)
    registry_dir = settings.registry_path.resolve().parent
    app[SUPERVISOR] = Supervisor(registry, registry_dir, settings)
    keys = KeyTable.build(registry.keys, registry_dir, settings.api_key, settings.admin_key)
    app[CONFIG] = LiveConfig(registry, keys, settings.registry_path, digest=file_digest(settings.registry_path))
    ledger = Ledger(ledger_path(settings, registry), registry.usage.retention_days) if registry.usage.enabled else None
    observer = Observer(registry, Metrics(), ledger, SpendBook(), Limiter())
    observer.metrics.watch(app[SUPERVISOR].status, ledger.status if ledger is not None else None)
    app[SUPERVISOR].swap_listeners.append(observer.metrics.swapped)
    app[OBSERVER] = observer
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_ledger_lifetime)
    upstreams = {name: make_provider(name, config) for name, config in registry.providers.items()}
    app[DISPATCHER] = Dispatcher(registry, app[SUPERVISOR], upstreams)
    app[CACHE] = ResponseCache.from_registry(registry)
    gateway = app[GATEWAY] = Gateway(registry, app[SUPERVISOR], app[DISPATCHER], app[CACHE], observer)

    def also(new: Registry) -> None:
        observer.registry = new  # costs of cloud models
        app[CACHE].registry = new

    app[RELOADER] = Reloader(app[CONFIG], settings, gateway, app[DISPATCHER], make_provider, also)
    for name, upstream in upstreams.items():
        if (why := upstream.disabled_reason()) is not None:
            log.info("provider %s is disabled: %s", name, why)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/openapi.json", openapi)
    openai.add_routes(app)
    ollama.add_routes(app)
    responses.add_routes(app)
    anthropic.add_routes(app)
    admin.add_routes(app)
    app.cleanup_ctx.append(_supervisor_lifetime)
    t = registry.thermal
    limits = ThermalLimits(t.sensor, t.soft_c, t.hard_c, t.hysteresis_c)
    sampler = Sampler(settings.telemetry_interval_s, daemon=telemetry.daemon_figures(app), limits=limits)
    telemetry.setup(app, sampler)
    app[OBSERVER].metrics.watch_hardware(sampler.snapshot)
    app[DISPATCHER].thermal = lambda: (sampler.thermal.value, sampler.thermal_reason)
    return app


PRELOAD = web.AppKey("preload", asyncio.Task[None])


async def _ledger_lifetime(app: web.Application) -> AsyncIterator[None]:
    ledger = app[OBSERVER].ledger
    if ledger is None:
        yield
        return
    await ledger.start()
    try:
        # today's spend survives a restart: the budget book starts from the ledger
        spent = await ledger.read(lambda conn: query.spend_since(conn, day_start(time.time())))
        app[OBSERVER].spend.spent.update(spent)
    except (sqlite3.Error, OSError) as exc:
        log.error("usage ledger %s: cannot read today's spend (%s); budgets start from zero", ledger.path, exc)
    log.info("usage ledger: %s (retention %s days)", ledger.path, ledger.retention_days)
    yield
    await ledger.close()


async def _supervisor_lifetime(app: web.Application) -> AsyncIterator[None]:
    supervisor = app[SUPERVISOR]
    # preload in the background: the socket listens at once and /ready tells when the model is in
    preload = asyncio.create_task(supervisor.start())
    app[PRELOAD] = preload
    yield
    preload.cancel()
    await asyncio.gather(preload, return_exceptions=True)
    await supervisor.close()
    await app[CACHE].close()
    for upstream in app[DISPATCHER].upstreams.values():
        await upstream.close()


async def serve(settings: Settings, registry: Registry) -> None:
    """Run until SIGINT/SIGTERM; in-flight requests get a grace period to finish."""
    # workers inherit it: their prefix snapshots go under the state directory --state-dir names
    os.environ["ZOE_STATE_DIR"] = str(settings.state_dir)
    app = build_app(settings, registry)
    # cancel the handler when its client disconnects, so an abandoned generation frees the model
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=settings.drain_timeout_s,
        # counted from the connection's start too, so it also ends slowloris headers and idle sockets
        keepalive_timeout=settings.keepalive_timeout_s,
        # aiohttp's own defaults, stated: a longer request line or header is answered 400 by the parser
        max_line_size=8190,
        max_field_size=8190,
        max_headers=128,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    for address in runner.addresses:
        log.info("zoe-edge %s listening on http://%s:%s", __version__, *address[:2])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # systemd's ExecReload sends SIGHUP: reread models.yaml; a bad edit is logged and the running config stays
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_soon(app))
    notifier = Notifier()
    supervisor = app[SUPERVISOR]
    # systemd hears READY=1 once we listen and the preload has finished, loaded or failed clearly
    await asyncio.wait({app[PRELOAD]}, timeout=settings.load_timeout_s)
    notifier.ready(status_line(supervisor, app[SAMPLER]))
    keepalive = asyncio.create_task(_keep_systemd_informed(notifier, supervisor, app[SAMPLER]))
    try:
        await stop.wait()
    finally:
        drain = app[DRAIN]
        drain.begin()
        log.info("shutting down: %d in-flight request(s) get %g s to finish; new ones get 503",
                 drain.in_flight, settings.drain_timeout_s)
        notifier.stopping()
        if not await drain.wait_idle(settings.drain_timeout_s):
            log.warning("drain timeout: cutting %d request(s) still in flight", drain.in_flight)
        keepalive.cancel()
        await asyncio.gather(keepalive, return_exceptions=True)
        await runner.cleanup()


_RELOADS: set[asyncio.Task[None]] = set()


def _reload_soon(app: web.Application) -> None:
    async def run() -> None:
        with contextlib.suppress(RegistryError):  # logged by the reloader; the running config stays
            await app[RELOADER].reload()

    task = asyncio.get_running_loop().create_task(run())
    _RELOADS.add(task)
    task.add_done_callback(_RELOADS.discard)


def file_digest(path: Path) -> str:
    try:
        return digest_of(path.read_bytes())
    except OSError:
        return ""


def status_line(supervisor: Supervisor, sampler: Sampler) -> str:
    """What ``systemctl status`` shows: the model, its state, the last speed and the watched sensor."""
    parts = [f"model {supervisor.loaded or 'none'} ({supervisor.state.value})"]
    if supervisor.last_tokens_per_s is not None:
        parts.append(f"{supervisor.last_tokens_per_s:.1f} tok/s")
    temperature = sampler.temperature()
    if temperature is not None:
        parts.append(f"{temperature:.0f} C")
    return ", ".join(parts)


async def _keep_systemd_informed(notifier: Notifier, supervisor: Supervisor, sampler: Sampler) -> None:
    """WATCHDOG=1 at half the watchdog interval, from the loop itself: a wedged loop stops the pings."""
    if not notifier.enabled:
        return
    interval = notifier.watchdog_interval or 10.0
    last_status = ""
    while True:
        if notifier.watchdog_interval is not None:
            notifier.watchdog()
        line = status_line(supervisor, sampler)
        if line != last_status:
            notifier.status(line)
            last_status = line
        await asyncio.sleep(interval)
