"""Which targets may serve a request, in which order, and when to move on to the next one.

Pure functions over the registry and the canonical request; :mod:`zoe_edge.routing.dispatch`
carries the plan out. A plan always says why it is what it is, and the reason travels to the
client in ``x-zoe-route``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from zoe_edge.assist.utterance import classify as classify_utterance
from zoe_edge.canonical import GenerationRequest, Priority, ToolChoice
from zoe_edge.errors import Failure, ModelNotFound
from zoe_edge.registry import AutoRouting, AutoRule, Registry, Route, SelectTarget, ToolChoicePolicy
from zoe_edge.routing.select import Selection, select_model


@dataclass(frozen=True)
class Target:
    model: str
    provider: str | None = None  # None: the local slot

    @property
    def local(self) -> bool:
        return self.provider is None

    @property
    def label(self) -> str:
        return f"{self.provider or 'local'}:{self.model}"


@dataclass(frozen=True)
class Skip:
    """A target passed over: which, the kind of failure (for metrics and the ledger) and the readable why."""

    target: str
    kind: Failure
    why: str

    def __str__(self) -> str:
        return f"{self.target}: {self.why}"


@dataclass(frozen=True)
class RoutePlan:
    requested: str
    route: str  # the route, alias or model name that was resolved
    targets: tuple[Target, ...]
    deadline: float | None
    reason: str
    defaults_from: Route | None = None  # per-route parameter overrides
    tool_choice: ToolChoicePolicy | None = None  # from the auto rule, else from the route
    priority: Priority | None = None  # the route's ``priority:`` (of the route the auto router chose)

    @property
    def route_priority(self) -> tuple[str, Priority] | None:
        """``(route, priority)`` when the route sets one (what ``choose_priority`` takes), else ``None``."""
        return (self.route, self.priority) if self.priority is not None else None


def parse_target(spec: str) -> Target:
    """``model`` (local, from the registry) or ``provider:model`` (a cloud provider's model)."""
    provider, sep, model = spec.partition(":")
    if sep and provider and model and "/" not in provider:
        return Target(model=model, provider=provider)
    return Target(model=spec)


def last_user_text(req: GenerationRequest) -> str:
    if req.messages is None:
        return req.prompt or ""
    for message in reversed(req.messages):
        if message.role == "user":
            return message.content
    return ""


def match_rule(auto: AutoRouting, req: GenerationRequest) -> AutoRule | None:
    """The first rule whose every condition holds."""
    text = last_user_text(req)
    kind = classify_utterance(text).kind if any(rule.utterance for rule in auto.rules) else None
    for rule in auto.rules:
        if rule.tools is not None and rule.tools != bool(req.tools):
            continue
        if rule.pattern is not None and not re.search(rule.pattern, text, re.IGNORECASE):
            continue
        if rule.utterance is not None and kind != rule.utterance:
            continue
        return rule
    return None


def classify(auto: AutoRouting, req: GenerationRequest) -> tuple[str, str]:
    """The route for an ``auto`` request and why."""
    rule = match_rule(auto, req)
    return (rule.route, rule.reason) if rule else (auto.default, "no rule matched")


def effective_tool_choice(policy: ToolChoicePolicy | None, req: GenerationRequest) -> ToolChoice:
    """The tool choice a route's policy gives this request; a client's explicit choice is kept."""
    if policy is None or not req.tools or req.tool_choice.mode != "auto":
        return req.tool_choice
    if policy == "first-turn":
        last = req.messages[-1].role if req.messages else "user"
        mode = "required" if last == "user" else "none" if last == "tool" else "auto"
        return ToolChoice(mode=mode)
    return ToolChoice(mode=policy)


def route_selections(
    registry: Registry,
    route: Route,
    fits: Mapping[str, bool] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> list[Selection]:
    """What each ``select`` target of ``route`` resolves to, in order."""
    return [select_model(registry, t.select, fits, sizes) for t in route.targets if isinstance(t, SelectTarget)]


def has_selection(registry: Registry, requested: str) -> bool:
    """Whether resolving ``requested`` may need the fit map (a route, or the auto router, with a select target)."""
    routes = [registry.routes.get(requested)]
    if registry.auto is not None and requested == registry.auto.name:
        routes = list(registry.routes.values())
    return any(isinstance(t, SelectTarget) for r in routes if r is not None for t in r.targets)


def plan_request(
    registry: Registry,
    requested: str,
    req: GenerationRequest,
    fits: Mapping[str, bool] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> RoutePlan:
    """Resolve a client's ``model`` field: a model, an alias, a route, or the ``auto`` router.

    ``fits`` and ``sizes`` (model -> fits the current profile, file bytes) are only read for routes
    with ``select`` targets.
    """
    auto = registry.auto
    if auto is not None and requested == auto.name:
        rule = match_rule(auto, req)
        chosen, why = (rule.route, rule.reason) if rule else (auto.default, "no rule matched")
        inner = plan_request(registry, chosen, req, fits, sizes)
        policy = rule.tool_choice if rule and rule.tool_choice else inner.tool_choice
        return RoutePlan(
            requested,
            inner.route,
            inner.targets,
            inner.deadline,
            f"{chosen} ({why})",
            inner.defaults_from,
            policy,
            inner.priority,
        )
    if requested in registry.models:
        return RoutePlan(requested, requested, (Target(requested),), None, f"{requested} (model)")
    if requested in registry.aliases:
        model = registry.aliases[requested]
        return RoutePlan(requested, requested, (Target(model),), None, f"{requested} (alias of {model})")
    route = registry.routes.get(requested)
    if route is not None:
        targets: list[Target] = []
        notes: list[str] = []
        for spec in route.targets:
            if isinstance(spec, SelectTarget):
                selection = select_model(registry, spec.select, fits, sizes)
                notes.append(selection.reason)
                target = Target(selection.model) if selection.model else None
            else:
                target = parse_target(spec)
            if target is not None and target not in targets:
                targets.append(target)
        if not targets:
            raise ModelNotFound(f"route {requested!r} has no usable target: {'; '.join(notes)}", param="model")
        reason = f"{requested} (route{'; ' + '; '.join(notes) if notes else ''})"
        return RoutePlan(
            requested,
            requested,
            tuple(targets),
            route.deadline,
            reason,
            route,
            route.params.tool_choice,
            route.priority,
        )
    known = ", ".join(registry.names())
    raise ModelNotFound(f"The model {requested!r} does not exist. Available: {known}", param="model")


def thermal_skip(state: str, why: str, has_fallback: bool) -> str | None:
    """Why the local model must not start this request because of heat, or ``None``.

    Above the soft limit only requests that have somewhere else to go leave the board; above the
    hard limit nothing starts locally.
    """
    if state == "hard" or (state == "soft" and has_fallback):
        return f"board over its {state} thermal limit ({why})"
    return None


def fallback_reason(kind: Failure, status: int) -> str | None:
    """Why the next target may try after this failure, or ``None`` when the request itself is at fault."""
    if kind is Failure.SERVER_ERROR:
        return f"error {status}"
    return kind.fallback
