"""The one request path: name -> key's rules -> route plan -> cache -> dispatch -> usage record.

Every front and the bench generate through :meth:`Gateway.generate`; every path that loads,
unloads or keeps a model loaded goes through :meth:`Gateway.load` / :meth:`Gateway.unload` /
:meth:`Gateway.keep_alive`, and anything that only names a model (show, pull, admin) through
:meth:`Gateway.resolve`. So a name means the same on every front, and a key's aliases, rpm, tpm
and daily budget apply wherever a model is named.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from zoe_edge.access.budget import seconds_to_midnight
from zoe_edge.access.keys import ClientKey
from zoe_edge.cache.config import CacheControls
from zoe_edge.cache.service import ResponseCache
from zoe_edge.canonical import Finish, GenerationRequest
from zoe_edge.errors import Failure, Forbidden, InvalidRequest, TooManyRequests, ZoeError
from zoe_edge.gguf_info import GGUFError, GGUFInfo, read_gguf
from zoe_edge.registry import Registry
from zoe_edge.routing.dispatch import Dispatched, Dispatcher, priority_headers
from zoe_edge.routing.names import Resolved, registry_name, resolve_name
from zoe_edge.routing.priority import PriorityChoice, choose_priority, traffic_priority
from zoe_edge.routing.routes import RoutePlan, has_selection
from zoe_edge.service.context import RequestContext
from zoe_edge.supervisor import Supervisor
from zoe_edge.supervisor.planner import plan_entry
from zoe_edge.supervisor.slot import SERVED_CONTEXT
from zoe_edge.usage.observer import Observer
from zoe_edge.usage.record import UsageRecord

log = logging.getLogger("zoe_edge.service")


class Service(Protocol):
    """What a front needs of the application (a test gives a front a fake one)."""

    async def generate(
        self, ctx: RequestContext, name: str, req: GenerationRequest, cache: CacheControls | None = None
    ) -> Dispatched: ...

    async def resolve(self, ctx: RequestContext, name: str, req: GenerationRequest | None = None) -> Resolved: ...

    async def load(
        self, ctx: RequestContext, name: str, req: GenerationRequest | None = None, *, require_local: bool = False
    ) -> str | None: ...

    async def unload(
        self, ctx: RequestContext, name: str, req: GenerationRequest | None = None, *, require_local: bool = False
    ) -> str | None: ...

    def keep_alive(self, model: str, seconds: float | None) -> None: ...

    async def embed(
        self, ctx: RequestContext, name: str, texts: list[str], dimensions: int | None, *, truncate: bool = False
    ) -> Embedded: ...

    async def fit_map(self) -> tuple[dict[str, bool], dict[str, int]]: ...


@dataclass(frozen=True)
class Embedded:
    """Embeddings as a front renders them: one unit vector per input, in order."""

    vectors: list[list[float]]
    model: str  # the local model that computed them
    prompt_tokens: int
    load_ms: float = 0.0  # the swap this request waited for, if it caused one


def shorten(vector: list[float], dimensions: int) -> list[float]:
    """A Matryoshka vector cut to its first ``dimensions`` and made a unit vector again."""
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head


def decide_priority(ctx: RequestContext, plan: RoutePlan, req: GenerationRequest) -> PriorityChoice:
    """This request's priority from its header, its route, its key and its traffic (see
    :func:`zoe_edge.routing.priority.choose_priority`)."""
    key = ctx.key
    key_priority = (key.id, key.priority) if key is not None and key.priority is not None else None
    return choose_priority(
        ctx.requested_priority, plan.route_priority, key_priority, traffic_priority(req, ctx.traffic)
    )


def locality(dispatched: Dispatched) -> str:
    """Where an answer came from, for the ledger and the metrics: local, cloud or cache."""
    if dispatched.cache == "hit":
        return "cache"
    return "local" if dispatched.served_by.local else "cloud"


class Gateway:
    def __init__(
        self,
        registry: Registry,
        supervisor: Supervisor,
        dispatcher: Dispatcher,
        cache: ResponseCache,
        observer: Observer | None = None,
    ) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.dispatcher = dispatcher
        self.cache = cache
        self.observer = observer

    # --- names and keys -------------------------------------------------------------------------

    async def resolve(self, ctx: RequestContext, name: str, req: GenerationRequest | None = None) -> Resolved:
        """The one resolver, under the key's rules (see :meth:`_resolve`)."""
        return (await self._resolve(ctx, name, req))[0]

    async def _resolve(
        self, ctx: RequestContext, name: str, req: GenerationRequest | None, registry: Registry | None = None
    ) -> tuple[Resolved, str | None]:
        """The key's checks run first, on the registry name (``name`` or ``name:latest``): 403 for a name the
        key may not use (an unknown one included, so a limited key learns no other names), 429 over its rpm /
        tpm, each such request counted. Returns the resolution and, when the key is over its daily budget,
        why it must stay local."""
        registry = registry if registry is not None else self.registry
        canonical = registry_name(registry, name)
        local_only = None
        if ctx.key is not None and self.observer is not None:
            local_only = self.check_key(ctx.key, canonical)
        fits: dict[str, bool] | None = None
        sizes: dict[str, int] | None = None
        if has_selection(registry, canonical):
            fits, sizes = await self.fit_map()
        return resolve_name(registry, name, req, fits, sizes), local_only

    def check_key(self, key: ClientKey, name: str) -> str | None:
        """Carry out a key's rules for asking for ``name``: 403, 429, or why it must stay local (budget)."""
        if not key.may_use(name):
            raise Forbidden(f"key {key.id!r} may not use {name!r}", param="model", code="model_not_allowed")
        assert self.observer is not None
        now = time.time()
        decision = self.observer.limiter.decide(key.id, now, key.rpm, key.tpm)
        if not decision.allow:
            self.observer.metrics.rate_limited.labels(key.id, "tpm" if "tokens" in decision.reason else "rpm").inc()
            raise TooManyRequests(
                f"key {key.id!r}: {decision.reason}; retry in {decision.retry_after:.0f} s",
                code=Failure.KEY_RATE_LIMITED,
                retry_after=max(1.0, decision.retry_after),
            )
        return self.observer.spend.over_budget(key, now)

    async def fit_map(self) -> tuple[dict[str, bool], dict[str, int]]:
        """Whether each registry model fits the current profile (as if swapped in), and its file size.

        For routes that select by score. :func:`read_gguf` parses a header once per file version.
        """
        supervisor = self.supervisor

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

    # --- generation -----------------------------------------------------------------------------

    async def generate(
        self, ctx: RequestContext, name: str, req: GenerationRequest, cache: CacheControls | None = None
    ) -> Dispatched:
        """Route ``name`` and start the generation (or replay a cached answer).

        Raises before anything is sent when no target can serve; the returned stream's first event
        has already been read, so a front can still choose its status code and headers. ``cache`` is
        the body's cache controls; the request's ``Cache-Control`` header comes with ``ctx``.
        """
        rec = ctx.usage
        # one registry for the whole request, though a reload may replace the gateway's meanwhile
        registry = self.registry
        if rec is not None:
            rec.requested = registry_name(registry, name)
        resolved, local_only = await self._resolve(ctx, name, req, registry)
        plan = resolved.plan
        req = req.model_copy(update={"model": resolved.name})
        if rec is not None:
            rec.route = plan.route
        ctx.use_priority(decide_priority(ctx, plan, req))
        priority = ctx.priority.priority
        # the key's permissions were checked above, so a key that may not use a model gets none of its cached answers
        looked = await self.cache.lookup(plan, req, cache, ctx.cache_control)
        ctx.cache = looked.status
        # an error from here on still tells the client which route it took (and which target failed)
        ctx.route_headers = {"x-zoe-route": plan.reason, **priority_headers(ctx.priority)}
        SERVED_CONTEXT.set(None)  # set by the supervisor when the slot serves this request
        try:
            # a hit replays the stored answer and never calls dispatch: no supervisor, no upstream
            dispatched = await self.cache.open(
                looked,
                plan,
                lambda: self.dispatcher.dispatch(
                    plan,
                    req,
                    ctx.deadline,
                    local_only,
                    retry_after=seconds_to_midnight(time.time()),
                    registry=registry,
                    priority=priority,
                ),
            )
        except ZoeError as exc:
            if exc.target is not None:
                ctx.route_headers = {
                    "x-zoe-route": plan.reason,
                    "x-zoe-served-by": exc.target,
                    **priority_headers(ctx.priority),
                }
            raise
        # a cached answer waited for nobody, but says the priority the request had
        dispatched.priority = ctx.priority
        if dispatched.served_by.local and dispatched.cache != "hit":
            dispatched.context = SERVED_CONTEXT.get()
        ctx.served_by = dispatched.served_by.label
        ctx.route_headers = dispatched.headers()
        log.info(
            "route %s -> %s (cache %s: %s; priority %s: %s)",
            plan.reason,
            dispatched.served_by.label,
            looked.status,
            looked.reason,
            priority.value,
            ctx.priority.reason,
        )
        if rec is not None and self.observer is not None:
            await self._record(ctx, rec, self.observer, dispatched)
        return dispatched

    @staticmethod
    async def _record(ctx: RequestContext, rec: UsageRecord, observer: Observer, dispatched: Dispatched) -> None:
        rec.target = dispatched.served_by.label
        rec.locality = locality(dispatched)
        rec.skipped = [skip.kind for skip in dispatched.skipped]
        rec.fallback_reason = dispatched.fallback_reason()
        rec.ttft_ms = round((time.perf_counter() - rec.started) * 1000, 3)
        if isinstance(dispatched.first, Finish):
            # an empty answer: the first event is the last, so the row is committed before any byte is sent
            rec.add_usage(dispatched.first.usage)
            rec.add_timings(dispatched.first.timings)
            rec.status = 200
            await observer.finish(rec, ctx.cache)
        else:
            dispatched.events = observer.wrap(rec, dispatched.events, lambda: ctx.cache)

    # --- the model's lifecycle ------------------------------------------------------------------

    async def load(
        self, ctx: RequestContext, name: str, req: GenerationRequest | None = None, *, require_local: bool = False
    ) -> str | None:
        """Load the local model ``name`` stands for; ``None`` when its targets are all cloud models (a 400
        with ``require_local``)."""
        model = await self._local(ctx, name, req, require_local)
        if model is not None:
            await self.supervisor.load(model)
        return model

    async def unload(
        self, ctx: RequestContext, name: str, req: GenerationRequest | None = None, *, require_local: bool = False
    ) -> str | None:
        """Unload the local model ``name`` stands for if it is the loaded one; the model unloaded, or ``None``."""
        model = await self._local(ctx, name, req, require_local)
        if model is None or self.supervisor.loaded != model:
            return None
        return await self.supervisor.unload()

    async def _local(self, ctx: RequestContext, name: str, req: GenerationRequest | None, required: bool) -> str | None:
        resolved = await self.resolve(ctx, name, req)
        if resolved.model is None and required:
            raise InvalidRequest(f"{resolved.name!r} has only cloud targets: no local model to (un)load", param="name")
        return resolved.model

    def keep_alive(self, model: str, seconds: float | None) -> None:
        self.supervisor.set_keep_alive(model, seconds)

    # --- embeddings -----------------------------------------------------------------------------

    async def embed(
        self, ctx: RequestContext, name: str, texts: list[str], dimensions: int | None, *, truncate: bool = False
    ) -> Embedded:
        """Embed ``texts`` on the local model ``name`` stands for, under the key's rules as a generation.

        Only the local slot embeds: a name with no local target is a 400. ``dimensions`` cuts the vectors
        short for a model marked ``matryoshka`` (a 400 for any other); ``truncate`` cuts long inputs
        instead of refusing them.
        """
        rec = ctx.usage
        if rec is not None:
            rec.requested = registry_name(self.registry, name)
        resolved, _ = await self._resolve(ctx, name, None)
        model = resolved.model
        if rec is not None:
            rec.route = resolved.plan.route
        # no canonical request: an embedding's traffic default does not read one
        ctx.use_priority(decide_priority(ctx, resolved.plan, GenerationRequest(model=resolved.name, messages=[])))
        if model is None:
            raise InvalidRequest(
                f"{resolved.name!r} has only cloud targets; embeddings are served by local models only", param="model"
            )
        entry = self.registry.models[model]
        if dimensions is not None and not entry.matryoshka:
            raise InvalidRequest(
                f"model {model!r} does not support 'dimensions': its vectors cannot be shortened (a Matryoshka "
                "model can, with 'matryoshka: true' in models.yaml)",
                param="dimensions",
            )
        ctx.served_by = f"local:{model}"
        ctx.route_headers = {
            "x-zoe-route": resolved.plan.reason,
            "x-zoe-served-by": ctx.served_by,
            **priority_headers(ctx.priority),
        }
        swaps = self.supervisor.swap_records
        last = swaps[-1] if swaps else None
        out = await self.supervisor.embed(model, texts, ctx.deadline, truncate=truncate, priority=ctx.priority.priority)
        swaps = self.supervisor.swap_records
        load_ms = swaps[-1].duration_ms if swaps and swaps[-1] is not last and swaps[-1].model == model else 0.0
        vectors = out.vectors
        if dimensions is not None:
            if not 1 <= dimensions <= out.n_embd:
                raise InvalidRequest(
                    f"dimensions must be between 1 and {out.n_embd} (the width of {model!r})", param="dimensions"
                )
            vectors = [shorten(v, dimensions) for v in vectors]
        if rec is not None:
            rec.target, rec.locality = ctx.served_by, "local"
            rec.prompt_tokens = out.prompt_tokens
        return Embedded(vectors, model, out.prompt_tokens, load_ms)
