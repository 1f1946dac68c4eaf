"""Name -> model resolution and the registry's per-model defaults. Pure: no I/O, no processes."""

from __future__ import annotations

from dataclasses import dataclass

from zoe_edge.canonical import GenerationRequest
from zoe_edge.errors import ModelNotFound
from zoe_edge.registry import ModelEntry, Registry


@dataclass(frozen=True)
class Resolution:
    model: str
    reason: str


def resolve_model(registry: Registry, requested: str) -> Resolution:
    """The registry model a client's ``model`` field names; :class:`ModelNotFound` lists the choices."""
    if requested in registry.models:
        return Resolution(requested, f"{requested!r} is a model")
    target = registry.aliases.get(requested)
    if target is not None:
        return Resolution(target, f"alias {requested!r} -> {target!r}")
    known = ", ".join(registry.names())
    raise ModelNotFound(f"The model {requested!r} does not exist. Available: {known}", param="model")


def with_model_defaults(req: GenerationRequest, entry: ModelEntry) -> GenerationRequest:
    """Fill what the request left open from the model's registry entry."""
    return req.model_copy(
        update={
            "sampling": req.sampling.merged_over(entry.sampling),
            "max_tokens": req.max_tokens if req.max_tokens is not None else entry.max_tokens,
        }
    )
