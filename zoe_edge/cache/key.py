"""The cache key: a hash of what decides an answer, and of nothing else.

Pure. Two requests share a key when the same targets would receive the same effective request:
the alias a client used does not matter, the resolved model, its registry defaults, the route's
overrides and every output-changing field of the request do. ``stream`` does not: a stored answer
replays either way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from zoe_edge.canonical import GenerationRequest, Sampling
from zoe_edge.registry import Registry
from zoe_edge.routing.dispatch import apply_route_params
from zoe_edge.routing.resolve import with_model_defaults
from zoe_edge.routing.routes import RoutePlan, Target

KEY_VERSION = 2  # bump when the material below changes meaning, so old Redis entries stop matching

# the request fields that change what the model says; sampling and max_tokens are per target
_REQUEST_FIELDS = {"messages", "prompt", "stop", "constraint", "tools", "tool_choice", "parallel_tool_calls", "think"}
# the registry fields of a local model that change its output (not threads, batch, ttl, offload)
_MODEL_FIELDS = {"file", "chat_format", "tool_format", "n_ctx", "kv_cache_type", "reasoning"}


@dataclass(frozen=True)
class TargetView:
    """What one target would actually be asked: the effective sampling after every default."""

    target: Target
    sampling: Sampling
    max_tokens: int | None
    model: dict[str, Any] | None  # the local model's output-relevant registry fields


def target_views(
    registry: Registry, plan: RoutePlan, req: GenerationRequest
) -> tuple[GenerationRequest, list[TargetView]]:
    """The request after the route's overrides, and what each target of the plan would receive."""
    effective = apply_route_params(req, plan)
    views = []
    for target in plan.targets:
        if target.local:
            entry = registry.models[target.model]
            local = with_model_defaults(effective, entry)
            views.append(
                TargetView(
                    target, local.sampling, local.max_tokens, entry.model_dump(mode="json", include=_MODEL_FIELDS)
                )
            )
        else:
            views.append(TargetView(target, effective.sampling, effective.max_tokens, None))
    return effective, views


def cache_key(effective: GenerationRequest, views: list[TargetView], prefix: str = "") -> str:
    material = {
        "v": KEY_VERSION,
        "targets": [
            {
                "target": v.target.label,
                "model": v.model,
                "sampling": v.sampling.model_dump(mode="json", exclude_none=True),
                "max_tokens": v.max_tokens,
            }
            for v in views
        ],
        "request": effective.model_dump(mode="json", include=_REQUEST_FIELDS),
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return prefix + hashlib.sha256(canonical.encode()).hexdigest()
