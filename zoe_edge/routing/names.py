"""The one resolver for a client-given model name, on every path that names one.

Generation (OpenAI and Ollama), Ollama's load / unload / keep-alive calls, ``/api/show``,
``/api/pull``, the ``/api/tags`` and ``/api/ps`` entries and the admin load / unload all resolve
a name here, so a name means the same thing on every front. Pure: the registry and the request
go in, a :class:`Resolved` (or :class:`~zoe_edge.errors.ModelNotFound`) comes out; the key's
rules are carried out by the caller (``zoe_edge.api.common.resolve``) on the registry name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from zoe_edge.canonical import GenerationRequest
from zoe_edge.registry import Registry
from zoe_edge.routing.routes import RoutePlan, plan_request

# Ollama publishes (and clients send) every name with a tag; the registry's names carry none
LATEST = ":latest"


def registry_name(registry: Registry, name: str) -> str:
    """The registry name ``name`` stands for: itself, or itself without Ollama's ``:latest`` tag.

    An unknown name comes back unchanged (the caller's checks, then the planner's 404, see it as sent).
    """
    names = registry.names()
    if name in names:
        return name
    bare = name.removesuffix(LATEST)
    return bare if bare != name and bare in names else name


@dataclass(frozen=True)
class Resolved:
    requested: str  # as the client sent it (``zoe-chat:latest``)
    name: str  # the registry name (``zoe-chat``)
    plan: RoutePlan  # the planner's answer for this name and request

    @property
    def model(self) -> str | None:
        """The local model the name stands for (the plan's first local target), or ``None`` (cloud only)."""
        return next((t.model for t in self.plan.targets if t.local), None)


def resolve_name(
    registry: Registry,
    name: str,
    req: GenerationRequest | None = None,
    fits: Mapping[str, bool] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> Resolved:
    """Resolve ``name`` as :func:`~zoe_edge.routing.routes.plan_request` does for a generation.

    ``req`` is the request being served; without one (a load, a show) an empty chat request is
    planned, so ``auto`` still applies its rules (those that need text or tools do not match) and
    ``select`` targets still choose by score. Raises ``ModelNotFound`` for an unknown name.
    """
    canonical = registry_name(registry, name)
    request = req if req is not None else GenerationRequest(model=canonical, messages=[])
    return Resolved(name, canonical, plan_request(registry, canonical, request, fits, sizes))
