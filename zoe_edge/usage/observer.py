"""One observer, two sinks: each generation request's record goes to the metrics and the ledger.

The record is started by the outermost middleware, filled by ``open_generation`` (key, route,
target, fallback reasons, time to first event) and by the event stream (usage), and finished
exactly once: by the stream wrapper just before the ``Finish`` (or error) event reaches the
front, so the row is committed before the response's last bytes are sent; or by the middleware
for requests that end in an error response or are cancelled.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from zoe_edge.access.budget import SpendBook
from zoe_edge.access.limits import Limiter
from zoe_edge.canonical import ErrorEvent, Event, Finish
from zoe_edge.registry import Registry
from zoe_edge.usage.ledger import Ledger
from zoe_edge.usage.metrics import Metrics
from zoe_edge.usage.record import UsageRecord

CLIENT_CLOSED = 499  # nginx's "client closed request": the row says the client left, not that we failed


def cost_of(registry: Registry, rec: UsageRecord) -> float:
    """US dollars from the provider's price list; local targets and unpriced models cost 0."""
    if rec.locality != "cloud" or not rec.target:
        return 0.0
    provider, _, model = rec.target.partition(":")
    config = registry.providers.get(provider)
    price = config.prices.get(model) if config is not None else None
    return price.cost(rec.prompt_tokens, rec.completion_tokens) if price is not None else 0.0


class Observer:
    def __init__(
        self, registry: Registry, metrics: Metrics, ledger: Ledger | None, spend: SpendBook, limiter: Limiter
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.ledger = ledger
        self.spend = spend
        self.limiter = limiter

    def start(self, request_id: str, endpoint: str) -> UsageRecord:
        return UsageRecord(ts=time.time(), started=time.perf_counter(), request_id=request_id, endpoint=endpoint)

    def _close(self, rec: UsageRecord, cache: Any) -> bool:
        if rec.done:
            return False
        rec.done = True
        rec.duration_ms = round((time.perf_counter() - rec.started) * 1000, 3)
        if isinstance(cache, str):
            rec.cache = cache
        rec.cost_usd = cost_of(self.registry, rec)
        now = time.time()
        if rec.key_id is not None:
            self.spend.add(rec.key_id, rec.cost_usd, now)
            self.limiter.charge(rec.key_id, now, rec.prompt_tokens + rec.completion_tokens)
        self.metrics.observe(rec)
        return True

    async def finish(self, rec: UsageRecord, cache: Any = None) -> None:
        """Count ``rec`` and commit its row (once); returns when the row is durable."""
        if self._close(rec, cache) and self.ledger is not None:
            await self.ledger.record(rec)

    def finish_nowait(self, rec: UsageRecord, cache: Any = None) -> None:
        if self._close(rec, cache) and self.ledger is not None:
            self.ledger.submit(rec)

    async def wrap(
        self, rec: UsageRecord, events: AsyncGenerator[Event, None], cache: Callable[[], Any]
    ) -> AsyncGenerator[Event, None]:
        """``events`` unchanged; the record is finished before the last event is handed on.

        ``cache()`` gives the response cache's verdict (hit, miss, bypass) at that moment.
        """
        try:
            async for event in events:
                if isinstance(event, Finish):
                    rec.add_usage(event.usage)
                    rec.add_timings(event.timings)
                    rec.status = 200
                    await self.finish(rec, cache())
                elif isinstance(event, ErrorEvent):
                    rec.status = event.status
                    rec.error = event.message[:500]
                    await self.finish(rec, cache())
                yield event
        finally:
            await events.aclose()
