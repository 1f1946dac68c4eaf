"""The response cache as the fronts use it: decide, look up, replay a hit, record a miss.

What is stored is the canonical event list (text deltas, tool calls, the finish), never a wire
format, so each front replays a hit through its own translation: a streaming client gets a stream
(SSE or NDJSON), a non-streaming one a whole body, whichever kind of request first produced it.

A hit reports the original answer's token counts with every prompt token marked cached, and zero
timings: the counts describe the answer the client got, the cached/zero figures say no model ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from zoe_edge.cache.backend import Backend, BackendFailed
from zoe_edge.cache.config import CacheControls, CacheSettings
from zoe_edge.cache.key import cache_key, target_views
from zoe_edge.cache.memory import MemoryCache
from zoe_edge.cache.policy import CacheStatus, Decision, decide
from zoe_edge.canonical import (
    ErrorEvent,
    Event,
    Finish,
    GenerationRequest,
    Timings,
    Usage,
    event_from_wire,
    event_to_wire,
)
from zoe_edge.registry import Registry
from zoe_edge.routing.dispatch import Dispatched
from zoe_edge.routing.routes import RoutePlan, Target, parse_target

log = logging.getLogger("zoe_edge.cache")

PAYLOAD_VERSION = 1
CACHE_PROVIDER = "cache"  # a hit's served_by is cache:<model>: not local, no upstream


@dataclass
class Lookup:
    """One request's cache outcome: ``status`` goes to ``x-zoe-cache``; ``events`` is set on a hit."""

    status: CacheStatus
    reason: str
    key: str | None = None
    store: bool = False
    ttl: float = 0.0
    events: list[Event] | None = None
    served_by: str | None = None  # on a hit: the target that produced the stored answer


def make_backend(settings: CacheSettings) -> Backend | None:
    if settings.backend == "memory":
        return MemoryCache(settings.max_entries, settings.max_bytes, settings.max_item_bytes)
    if settings.backend == "redis":
        from zoe_edge.cache.redis_backend import RedisCache  # the redis package is an optional extra

        assert settings.url is not None
        return RedisCache(
            settings.url,
            safe_url=settings.safe_url() or "",
            timeout=settings.timeout,
            retry_interval=settings.retry_interval,
            max_item_bytes=settings.max_item_bytes,
        )
    return None


def encode(served_by: str, events: list[Event]) -> bytes:
    payload = {"v": PAYLOAD_VERSION, "served_by": served_by, "events": [event_to_wire(e) for e in events]}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def decode(raw: bytes) -> tuple[str, list[Event]]:
    payload = json.loads(raw)
    if payload.get("v") != PAYLOAD_VERSION:
        raise ValueError(f"payload version {payload.get('v')!r}")
    events = [event_from_wire(frame) for frame in payload["events"]]
    if not events or not isinstance(events[-1], Finish):
        raise ValueError("a stored answer must end with its finish")
    return str(payload["served_by"]), events


def as_hit(finish: Finish) -> Finish:
    u = finish.usage
    return Finish(finish.reason, Usage(u.prompt_tokens, u.completion_tokens, u.prompt_tokens), Timings())


async def replay(events: list[Event]) -> AsyncGenerator[Event, None]:
    for event in events:
        yield event


class ResponseCache:
    def __init__(self, settings: CacheSettings, registry: Registry, backend: Backend | None) -> None:
        self.settings = settings
        self.registry = registry
        self.backend = backend
        self.counts = {
            "hit": 0,
            "miss": 0,
            "bypass": 0,
            "stored": 0,
            "store_failed": 0,
            "too_large": 0,
            "unreadable": 0,
        }
        self._writes: set[asyncio.Task[None]] = set()

    @classmethod
    def from_registry(cls, registry: Registry) -> ResponseCache:
        return cls(registry.cache, registry, make_backend(registry.cache))

    def _bypass(self, reason: str) -> Lookup:
        self.counts["bypass"] += 1
        return Lookup("bypass", reason)

    async def lookup(
        self, plan: RoutePlan, req: GenerationRequest, controls: CacheControls | None, cache_control: str | None
    ) -> Lookup:
        backend = self.backend
        if backend is None:
            return self._bypass("cache off")
        effective, views = target_views(self.registry, plan, req)
        route_mode = plan.defaults_from.cache if plan.defaults_from is not None else "deterministic"
        decision: Decision = decide(route_mode, views, controls, cache_control, backend.problem())
        ttl = controls.ttl if controls is not None and controls.ttl is not None else self.settings.ttl
        if not decision.lookup and not decision.store:
            return self._bypass(decision.reason)
        key = cache_key(effective, views, self.settings.key_prefix)
        if not decision.lookup:
            self.counts["bypass"] += 1
            return Lookup("bypass", decision.reason, key, True, ttl)
        try:
            raw = await backend.get(key)
        except BackendFailed as exc:
            return self._bypass(f"cache unavailable: {exc}")
        if raw is not None:
            try:
                served_by, events = decode(raw)
            except (ValueError, KeyError, TypeError) as exc:
                # another version's entry or a damaged one: answer fresh and overwrite it
                self.counts["unreadable"] += 1
                log.info("cache entry %s unreadable (%s); treated as a miss", key[-12:], exc)
            else:
                self.counts["hit"] += 1
                last = events[-1]
                assert isinstance(last, Finish)  # decode refuses anything else
                events[-1] = as_hit(last)
                return Lookup("hit", decision.reason, key, False, ttl, events, served_by)
        self.counts["miss"] += 1
        return Lookup("miss", decision.reason, key, decision.store, ttl)

    async def open(self, looked: Lookup, plan: RoutePlan, dispatch: Callable[[], Awaitable[Dispatched]]) -> Dispatched:
        """A hit as a :class:`Dispatched` replaying the stored events; else ``dispatch()``'s, recorded if storable."""
        if looked.events is not None:
            served = Target(parse_target(looked.served_by or "").model, provider=CACHE_PROVIDER)
            return Dispatched(plan, served, looked.events[0], replay(looked.events[1:]), cache="hit")
        dispatched = await dispatch()
        dispatched.cache = looked.status
        if looked.store:
            dispatched.events = self.record(looked, dispatched.served_by.label, dispatched.first, dispatched.events)
        return dispatched

    def record(
        self, lookup: Lookup, served_by: str, first: Event | None, events: AsyncGenerator[Event, None]
    ) -> AsyncGenerator[Event, None]:
        """``events`` unchanged, storing the whole answer once it has finished successfully."""
        seen: list[Event] = [] if first is None else [first]
        if isinstance(first, Finish):
            self._store(lookup, served_by, seen)
        if first is None or isinstance(first, Finish | ErrorEvent):
            return events
        return self._recording(lookup, served_by, seen, events)

    async def _recording(
        self, lookup: Lookup, served_by: str, seen: list[Event], events: AsyncGenerator[Event, None]
    ) -> AsyncGenerator[Event, None]:
        try:
            async for event in events:
                if isinstance(event, ErrorEvent):
                    yield event
                    return
                seen.append(event)
                if isinstance(event, Finish):
                    # stored before the last chunk goes out: a front stops reading at the finish
                    self._store(lookup, served_by, seen)
                yield event
        finally:
            await events.aclose()

    def _store(self, lookup: Lookup, served_by: str, events: list[Event]) -> None:
        finish = events[-1]
        if lookup.key is None or self.backend is None or not isinstance(finish, Finish) or finish.reason == "cancelled":
            return
        raw = encode(served_by, events)
        if isinstance(self.backend, MemoryCache):
            self.counts["stored" if self.backend.put_now(lookup.key, raw, lookup.ttl) else "too_large"] += 1
            return
        # a network store never delays the response; the task set keeps the write alive until done
        task = asyncio.create_task(self._put(lookup.key, raw, lookup.ttl))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: str, raw: bytes, ttl: float) -> None:
        assert self.backend is not None
        try:
            stored = await self.backend.put(key, raw, ttl)
        except BackendFailed:
            self.counts["store_failed"] += 1
            return
        self.counts["stored" if stored else "too_large"] += 1

    async def drain(self) -> None:
        """Wait for background writes (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"backend": self.settings.backend if self.backend is not None else "off"}
        if self.backend is None:
            body["healthy"] = True
            return body
        body.update(self.backend.status())
        body["ttl_s"] = self.settings.ttl
        body["requests"] = dict(self.counts)
        return body

    async def close(self) -> None:
        await self.drain()
        if self.backend is not None:
            await self.backend.close()
