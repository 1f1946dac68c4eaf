"""The registry's per-model defaults applied to a request. Pure: no I/O, no processes."""

from __future__ import annotations

from zoe_edge.canonical import GenerationRequest
from zoe_edge.registry import ModelEntry


def with_model_defaults(req: GenerationRequest, entry: ModelEntry) -> GenerationRequest:
    """Fill what the request left open from the model's registry entry."""
    return req.model_copy(
        update={
            "sampling": req.sampling.merged_over(entry.sampling),
            "max_tokens": req.max_tokens if req.max_tokens is not None else entry.max_tokens,
        }
    )
