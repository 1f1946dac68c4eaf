"""Carry out a route plan: try its targets in order until one produces a first event.

The only place that switches targets, and it does so only before the first event: once a target
has produced output, its stream is the response, and a later failure ends that stream with an
error rather than splicing another target's words onto it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from zoe_edge.assist import TurnPlan, plan_turn
from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, Priority, TextDelta, Usage
from zoe_edge.errors import Failure, ServiceUnavailable, TooManyRequests, ZoeError
from zoe_edge.gguf_info import GGUFError, read_chat_template
from zoe_edge.registry import ModelEntry, Registry
from zoe_edge.routing.priority import PriorityChoice
from zoe_edge.routing.reasoning import NO_SPLIT, ReasoningSetup, resolve, split_reasoning
from zoe_edge.routing.resolve import with_model_defaults
from zoe_edge.routing.routes import RoutePlan, Skip, Target, effective_tool_choice, fallback_reason, thermal_skip
from zoe_edge.supervisor import Supervisor
from zoe_edge.supervisor.planner import ContextDecision
from zoe_edge.worker.templates import bundled_template

log = logging.getLogger("zoe_edge.routing")


class Upstream(Protocol):
    """What dispatch needs of a cloud provider (see :mod:`zoe_edge.providers`)."""

    def disabled_reason(self) -> str | None: ...

    def cooling_down(self) -> float | None: ...

    def generate(self, model: str, req: GenerationRequest) -> AsyncGenerator[Event, None]: ...

    async def close(self) -> None: ...


def header_text(text: str) -> str:
    """A reason as a header value: reasons quote entity and model names, which may be any text, and a
    header carries ASCII on one line."""
    return text.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")


def priority_headers(choice: PriorityChoice) -> dict[str, str]:
    """The priority a request was queued at and which source decided it."""
    return {"x-zoe-priority": choice.priority.value, "x-zoe-priority-reason": header_text(choice.reason)}


@dataclass
class Dispatched:
    plan: RoutePlan
    served_by: Target
    first: Event | None
    events: AsyncGenerator[Event, None]
    skipped: list[Skip] = field(default_factory=list)  # one per target passed over
    cache: str | None = None  # hit | miss | bypass, from the response cache
    turn: str | None = None  # how the assist turn planner shaped a local answer, when it did
    context: ContextDecision | None = None  # the context size the slot served a local answer at, and why
    priority: PriorityChoice | None = None  # the priority the gateway chose, and why

    def headers(self) -> dict[str, str]:
        out = {"x-zoe-route": self.plan.reason, "x-zoe-served-by": self.served_by.label}
        if self.turn is not None:
            out["x-zoe-turn"] = header_text(self.turn)
        if self.skipped:
            out["x-zoe-fallback-reason"] = self.fallback_reason() or ""
        if self.cache is not None:
            out["x-zoe-cache"] = self.cache
        if self.context is not None:
            out["x-zoe-context"] = str(self.context.n_ctx)
            out["x-zoe-context-reason"] = header_text(self.context.reason)
        if self.priority is not None:
            out.update(priority_headers(self.priority))
        return out

    def fallback_reason(self) -> str | None:
        return "; ".join(str(s) for s in self.skipped) or None


def apply_route_params(req: GenerationRequest, plan: RoutePlan, planned_turn: bool = False) -> GenerationRequest:
    """Route overrides under the client's explicit values.

    ``planned_turn``: the assist turn planner already chose the tool choice, which the route's
    policy must not undo.
    """
    update: dict[str, object] = {}
    if not planned_turn:
        update["tool_choice"] = effective_tool_choice(plan.tool_choice, req)
    if plan.defaults_from is not None:
        params = plan.defaults_from.params
        update["sampling"] = req.sampling.merged_over(params.sampling)
        update["max_tokens"] = req.max_tokens if req.max_tokens is not None else params.max_tokens
    return req.model_copy(update=update)


async def _spoken(text: str) -> AsyncGenerator[Event, None]:
    """An answer the turn planner built from a tool result: no model call, no tokens."""
    yield TextDelta(text)
    yield Finish("stop", Usage(0, 0))


async def _chain(first: Event, rest: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    yield first
    async for event in rest:
        yield event


def _always_cool() -> tuple[str, str]:
    return "normal", "no telemetry"


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        supervisor: Supervisor,
        upstreams: Mapping[str, Upstream],
        thermal: Callable[[], tuple[str, str]] = _always_cool,
    ) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.upstreams = upstreams
        self.thermal = thermal  # (state, reason) from the telemetry sampler
        # per model file version and registry options: the template is read from the GGUF once
        self._reasoning: dict[tuple[object, ...], ReasoningSetup] = {}

    def _turn(self, req: GenerationRequest, registry: Registry) -> TurnPlan:
        settings = registry.assist
        if not settings.enabled:
            return TurnPlan(req, "assist planning is off", applied=False)
        return plan_turn(req, settings.answers)

    def _open(
        self,
        target: Target,
        req: GenerationRequest,
        deadline: float | None,
        turn: TurnPlan,
        registry: Registry,
        priority: Priority = Priority.NORMAL,
    ) -> AsyncGenerator[Event, None]:
        if target.local:
            # cloud models plan their own turns; the planner shapes what a small local model is asked
            if turn.answer is not None:
                return _spoken(turn.answer)
            entry = registry.models[target.model]
            local = with_model_defaults(req, entry)
            # the slot's queue serves higher priorities first; a cloud target has its own queue, so only here
            events = self.supervisor.generate(target.model, local, deadline, priority=priority)
            # a raw prompt is the client's own text, not the template's: no block opens where it expects
            if local.messages is None or (entry.reasoning == "none" and local.think is not False):
                return events
            return self._reasoned(target.model, entry, local.think, events)
        upstream = self.upstreams[target.provider or ""]
        return upstream.generate(target.model, req)

    async def _reasoned(
        self, model: str, entry: ModelEntry, think: bool | None, events: AsyncGenerator[Event, None]
    ) -> AsyncGenerator[Event, None]:
        """A local stream with the model's thinking apart from its answer.

        The template is looked up once the first event came: the model is loaded by then, so its file
        is in place (looking earlier could start assembling a packaged model beside the loader).
        """
        async with aclosing(events) as source:
            first = await anext(source, None)
            if first is None:
                return
            setup = await self._reasoning_setup(model, entry)
            # the worker does not yet render the template with enable_thinking (see reasoning.template_kwargs)
            async for event in split_reasoning(_chain(first, source), setup, think, switched=False):
                yield event

    async def _reasoning_setup(self, model: str, entry: ModelEntry) -> ReasoningSetup:
        if entry.reasoning == "none":
            return NO_SPLIT
        path: Path | None = None
        if entry.chat_format == "auto":
            try:
                path = self.supervisor.model_file(model)
                stat = path.stat()
            except (OSError, ValueError, ImportError, KeyError):  # KeyError: a reload removed the model
                return resolve(entry.reasoning, None)
            key: tuple[object, ...] = (entry.reasoning, str(path), stat.st_size, stat.st_mtime_ns)
        else:
            key = (entry.reasoning, "bundled", entry.chat_format)
        setup = self._reasoning.get(key)
        if setup is None:
            setup = await asyncio.to_thread(self._read_setup, entry, path)
            self._reasoning[key] = setup
            log.info("%s: reasoning: %s", model, setup.reason)
        return setup

    @staticmethod
    def _read_setup(entry: ModelEntry, path: Path | None) -> ReasoningSetup:
        if path is None:
            return resolve(entry.reasoning, bundled_template(entry.chat_format))
        try:
            template = read_chat_template(path)
        except (OSError, ValueError, GGUFError) as exc:
            log.warning("chat template of %s unreadable (%s): reasoning not split", path, exc)
            template = None
        return resolve(entry.reasoning, template)

    def _unusable(self, target: Target, has_fallback: bool) -> Skip | None:
        """Why ``target`` must not even be tried now, or ``None``."""
        if target.local:
            hot = thermal_skip(*self.thermal(), has_fallback)
            return None if hot is None else Skip(target.label, Failure.TOO_HOT, hot)
        upstream = self.upstreams.get(target.provider or "")
        if upstream is None:
            return Skip(target.label, Failure.PROVIDER_MISSING, "provider not configured")
        disabled = upstream.disabled_reason()
        if disabled:
            return Skip(target.label, Failure.PROVIDER_DISABLED, f"provider disabled ({disabled})")
        cooling = upstream.cooling_down()
        if cooling:
            return Skip(target.label, Failure.COOLING_DOWN, f"provider cooling down for {cooling:.0f} s")
        return None

    async def dispatch(
        self,
        plan: RoutePlan,
        req: GenerationRequest,
        deadline: float | None = None,
        local_only: str | None = None,
        retry_after: float = 3600.0,
        registry: Registry | None = None,
        priority: Priority = Priority.NORMAL,
    ) -> Dispatched:
        """The first target that starts answering, with its first event already read.

        Raises the request's own error (a 4xx) as soon as any target reports one, and
        :class:`ServiceUnavailable` listing every target and why when none could serve.
        ``local_only`` (why, e.g. a key over its daily budget) skips every cloud target; a plan with
        no local target then is a 429 that says why and when the budget renews (``retry_after``).
        ``registry``: the one the plan was made with (a reload may have replaced the dispatcher's since).
        ``priority``: where the request queues for the local slot.
        """
        registry = registry if registry is not None else self.registry
        if local_only is not None and not any(t.local for t in plan.targets):
            raise TooManyRequests(
                f"{plan.route!r} has only cloud targets and {local_only}",
                code="budget_exceeded",
                retry_after=retry_after,
            )
        turn = self._turn(req, registry)
        local_req = apply_route_params(turn.request, plan, planned_turn=turn.applied)
        req = apply_route_params(req, plan)
        wait = deadline if deadline is not None else plan.deadline
        skipped: list[Skip] = []
        waits: list[float] = []
        # with nowhere else to go, a target's own error is the most useful answer
        alone = len(plan.targets) == 1
        for i, target in enumerate(plan.targets):
            if local_only is not None and not target.local:
                skipped.append(Skip(target.label, Failure.OVER_BUDGET, local_only))
                continue
            unusable = self._unusable(target, has_fallback=i < len(plan.targets) - 1)
            if unusable is not None:
                skipped.append(unusable)
                if alone:
                    raise ServiceUnavailable(str(unusable), code=unusable.kind, retry_after=60)
                continue
            events = self._open(target, local_req if target.local else req, wait, turn, registry, priority)
            try:
                first = await anext(events, None)
            except ZoeError as exc:
                await events.aclose()
                reason = fallback_reason(exc.kind, exc.status)
                if reason is None or alone:
                    exc.target = target.label
                    raise
                skipped.append(Skip(target.label, exc.kind, f"{reason} ({exc.message})"))
                if exc.retry_after is not None:
                    waits.append(exc.retry_after)
                continue
            if isinstance(first, ErrorEvent) and not alone:
                reason = fallback_reason(first.kind, first.status)
                if reason is not None:
                    await events.aclose()
                    skipped.append(Skip(target.label, first.kind, f"{reason} ({first.message})"))
                    continue
            if skipped:
                log.warning("%s served by %s after: %s", plan.route, target.label, "; ".join(map(str, skipped)))
            shaped = turn.reason if target.local and turn.applied else None
            if shaped is not None:
                log.info("assist turn (%s): %s", turn.kind, shaped)
            return Dispatched(plan, target, first, events, skipped, turn=shaped)
        tried = "; ".join(map(str, skipped)) or "no targets"
        raise ServiceUnavailable(
            f"no target could serve {plan.route!r}: {tried}",
            code=Failure.NO_TARGET,
            retry_after=min(waits) if waits else 5.0,
        )
