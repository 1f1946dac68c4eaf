"""Reload ``models.yaml`` without a restart: validate the new file whole, then swap it in everywhere at once.

:func:`diff` is pure: what changed and what the change needs. :class:`Reloader` carries it out. An
invalid file is refused with the registry's one-line-per-problem report and the running config
stays; a valid one serves new names at once, answers 404 for removed ones (requests already routed
finish on the registry they were planned with), swaps a changed loaded model out once its in-flight
work is done, and keeps every key's rate windows and the day's spend (they live in the observer,
keyed by key id, not in the key table).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoe_edge.access.keys import KeyTable
from zoe_edge.config import Settings
from zoe_edge.errors import RegistryError
from zoe_edge.providers.config import ProviderConfig
from zoe_edge.registry import Registry, load_registry
from zoe_edge.routing.dispatch import Dispatcher, Upstream
from zoe_edge.service.config import LiveConfig, digest_of
from zoe_edge.service.gateway import Gateway

log = logging.getLogger("zoe_edge.reload")

# sections read once at start (the device profile and admission, the thermal limits, the cache backend,
# the ledger): a change to them is reported as needing a restart, the rest of the reload still applies
RESTART_SECTIONS = ("device", "admission", "thermal", "cache", "usage")


@dataclass(frozen=True)
class Change:
    added: list[str] = field(default_factory=list)  # names (models, aliases, routes) new in this file
    removed: list[str] = field(default_factory=list)
    changed_models: list[str] = field(default_factory=list)  # entries that differ
    changed_providers: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)  # sections that only a restart applies
    unload: str | None = None  # the loaded model, when its entry changed or went away

    @property
    def reason(self) -> str:
        parts = []
        for label, items in (
            ("added", self.added),
            ("removed", self.removed),
            ("changed", self.changed_models),
            ("providers changed", self.changed_providers),
            ("needs a restart", self.restart_needed),
        ):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        if self.unload is not None:
            parts.append(f"{self.unload} unloads once idle, to load its new entry")
        return "; ".join(parts) or "no changes"


def _names(registry: Registry) -> set[str]:
    return set(registry.names())


def diff(old: Registry, new: Registry, loaded: str | None) -> Change:
    """What replacing ``old`` by ``new`` changes, with ``loaded`` the model in the slot now."""
    old_names, new_names = _names(old), _names(new)
    changed = sorted(m for m in old.models.keys() & new.models.keys() if old.models[m] != new.models[m])
    providers = sorted(
        p for p in old.providers.keys() | new.providers.keys() if old.providers.get(p) != new.providers.get(p)
    )
    restart = [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]
    unload = loaded if loaded is not None and (loaded not in new.models or loaded in changed) else None
    return Change(
        sorted(new_names - old_names), sorted(old_names - new_names), changed, providers, restart, unload
    )


@dataclass(frozen=True)
class Reloaded:
    digest: str
    change: Change


class Reloader:
    def __init__(
        self,
        config: LiveConfig,
        settings: Settings,
        gateway: Gateway,
        dispatcher: Dispatcher,
        make_upstream: Callable[[str, ProviderConfig], Upstream],
        on_registry: Callable[[Registry], None] = lambda _: None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.gateway = gateway
        self.dispatcher = dispatcher
        self.make_upstream = make_upstream
        self.on_registry = on_registry  # the other holders of the registry (observer, cache)
        self._lock = asyncio.Lock()  # one reload at a time: SIGHUP and /admin/reload may race
        self._retired: set[asyncio.Task[object]] = set()

    async def reload(self) -> Reloaded:
        """Read, validate and apply the registry file; raises :class:`RegistryError` and changes nothing
        when it is invalid."""
        async with self._lock:
            path = self.config.source
            try:
                raw, new = await asyncio.to_thread(_read, path)
            except RegistryError as exc:
                self.config.last_error = str(exc)
                log.error("reload refused, the running config stays: %s", exc)
                raise
            digest = digest_of(raw)
            supervisor = self.gateway.supervisor
            change = diff(self.config.registry, new, supervisor.loaded)
            self._apply(new, change)
            self.config.digest = digest
            self.config.loaded_at = time.time()
            self.config.reloads += 1
            self.config.last_error = None
            log.info("reloaded %s (%s): %s", path, digest[:19], change.reason)
            return Reloaded(digest, change)

    def _apply(self, new: Registry, change: Change) -> None:
        registry_dir = self.config.source.resolve().parent
        self.config.keys = KeyTable.build(new.keys, registry_dir, self.settings.api_key, self.settings.admin_key)
        self.config.registry = new
        self.gateway.registry = new
        self.gateway.supervisor.use_registry(new)
        self.dispatcher.registry = new
        self.on_registry(new)
        if change.changed_providers:
            self.dispatcher.upstreams = self._upstreams(new, change.changed_providers)
        if change.unload is not None:
            self._later(self.gateway.supervisor.unload())

    def _upstreams(self, new: Registry, changed: list[str]) -> Mapping[str, Upstream]:
        old = dict(self.dispatcher.upstreams)
        out = {name: up for name, up in old.items() if name in new.providers and name not in changed}
        for name in changed:
            if name in new.providers:
                out[name] = self.make_upstream(name, new.providers[name])
        # a cloud stream that started before the reload still reads from its old client; close those later
        retired = [up for name, up in old.items() if out.get(name) is not up]
        if retired:
            self._later(_close_after(retired, self.settings.drain_timeout_s))
        return out

    def _later(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(work)
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)


async def _close_after(upstreams: list[Upstream], delay: float) -> None:
    await asyncio.sleep(delay)
    for upstream in upstreams:
        await upstream.close()


def _read(path: Path) -> tuple[bytes, Registry]:
    """The file's bytes (for the digest) and the registry they hold, validated whole."""
    registry = load_registry(path)  # every problem as a RegistryError, one line each
    try:
        return path.read_bytes(), registry
    except OSError as exc:
        raise RegistryError(str(path), [f"cannot read the registry: {exc.strerror or exc}"]) from None
