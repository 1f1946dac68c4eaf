"""A scripted stand-in for the service layer, so a front is tested alone: its translation, not the routing.

It implements :class:`zoe_edge.service.Service`: every generation answers with the scripted events
(or raises the scripted error); lifecycle calls are recorded. The priority is decided as the real
gateway decides it (header, route, key, traffic), so a front's ``x-zoe-priority`` can be tested here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import Event, GenerationRequest
from zoe_edge.routing.dispatch import Dispatched
from zoe_edge.routing.names import Resolved
from zoe_edge.routing.routes import RoutePlan, Target
from zoe_edge.service import RequestContext
from zoe_edge.service.gateway import decide_priority

MODEL = "smollm2-135m"


class FakeGateway:
    def __init__(self) -> None:
        self.script: list[Event] = []
        self.raises: Exception | None = None
        self.requests: list[GenerationRequest] = []
        self.caches: list[CacheControls | None] = []
        self.contexts: list[RequestContext] = []
        self.lifecycle: list[tuple[str, str]] = []  # (action, name)
        self.kept_alive: list[tuple[str, float | None]] = []

    def _plan(self, name: str) -> RoutePlan:
        return RoutePlan(name, name, (Target(MODEL),), None, f"{name} (model)")

    async def generate(
        self, ctx: RequestContext, name: str, req: GenerationRequest, cache: CacheControls | None = None
    ) -> Dispatched:
        self.requests.append(req)
        self.contexts.append(ctx)
        self.caches.append(cache)
        plan = self._plan(name)
        ctx.use_priority(decide_priority(ctx, plan, req))
        if self.raises is not None:
            raise self.raises

        async def scripted() -> AsyncGenerator[Event, None]:
            for event in self.script:
                yield event

        events = self.shape(req, scripted())
        first = await anext(events, None)
        return Dispatched(plan, Target(MODEL), first, events, priority=ctx.priority)

    def shape(self, req: GenerationRequest, events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
        """What dispatch would do to a local stream; a subclass can split reasoning here."""
        return events

    async def resolve(self, ctx: RequestContext, name: str, req: GenerationRequest | None = None) -> Resolved:
        return Resolved(name, name.removesuffix(":latest"), self._plan(name))

    async def load(self, ctx: RequestContext, name: str, req: Any = None, *, require_local: bool = False) -> str:
        self.lifecycle.append(("load", name))
        return MODEL

    async def unload(self, ctx: RequestContext, name: str, req: Any = None, *, require_local: bool = False) -> str:
        self.lifecycle.append(("unload", name))
        return MODEL

    def keep_alive(self, model: str, seconds: float | None) -> None:
        self.kept_alive.append((model, seconds))

    async def embed(self, ctx: RequestContext, name: str, texts: list[str], dimensions: int | None, **kw: Any) -> Any:
        raise NotImplementedError("the scripted gateway does not embed")

    async def fit_map(self) -> tuple[dict[str, bool], dict[str, int]]:
        return {}, {}
