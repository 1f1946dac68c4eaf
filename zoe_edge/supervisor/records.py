"""Typed records of what the slot did and where it stands.

``/admin/status``, the dashboard (through the telemetry sampler) and the metrics read these as
JSON; each ``as_dict`` writes the shape they have always read, so the types can change without
the wire changing.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SwapRecord:
    """One load into the slot: a swap from another model, a first load, or a context resize."""

    at: float
    previous: str | None  # "from" on the wire
    model: str  # "to" on the wire
    duration_ms: float
    llama_load_ms: float
    gpu_layers: int
    n_ctx: int
    resize: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "from": self.previous,
            "to": self.model,
            "duration_ms": self.duration_ms,
            "llama_load_ms": self.llama_load_ms,
            "gpu_layers": self.gpu_layers,
            "n_ctx": self.n_ctx,
            "resize": self.resize,
            "reason": self.reason,
        }


@dataclass
class LoadFailure:
    reason: str
    count: int
    retry_at: float  # monotonic
    signature: tuple[int, int] | None  # the file's (size, mtime) when it failed: a new file earns a new try

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"reason": self.reason, "count": self.count, "retry_in_s": round(max(0.0, self.retry_at - now), 1)}


@dataclass
class ModelStats:
    requests: int = 0
    service_s: float | None = None
    load_s: float | None = None
    crashes: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=10))

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "mean_request_s": None if self.service_s is None else round(self.service_s, 3),
            "load_s": None if self.load_s is None else round(self.load_s, 3),
        }


@dataclass(frozen=True)
class SlotStatus:
    state: str
    model: str | None
    since: float
    pid: int | None
    worker_rss_mb: int | None
    info: dict[str, Any] | None
    n_ctx: int | None
    context: dict[str, Any] | None
    plan: dict[str, Any] | None
    busy_with: str | None
    idle_unload_in_s: float | None
    spare_worker: int | None
    prefix_cache: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "model": self.model,
            "since": self.since,
            "pid": self.pid,
            "worker_rss_mb": self.worker_rss_mb,
            "info": self.info,
            "n_ctx": self.n_ctx,
            "context": self.context,
            "plan": self.plan,
            "busy_with": self.busy_with,
            "idle_unload_in_s": self.idle_unload_in_s,
            "spare_worker": self.spare_worker,
            "prefix_cache": self.prefix_cache,
        }


@dataclass(frozen=True)
class MemoryStatus:
    reserve_mb: int
    overhead_mb: int
    usable_mb: int

    def as_dict(self) -> dict[str, Any]:
        return {"reserve_mb": self.reserve_mb, "overhead_mb": self.overhead_mb, "usable_mb": self.usable_mb}


@dataclass(frozen=True)
class SupervisorStatus:
    """The supervisor's part of ``/admin/status``."""

    profile: dict[str, Any]
    memory: MemoryStatus
    slot: SlotStatus
    queue_by_model: dict[str, int]
    queue_length: int
    swaps: list[SwapRecord]
    failures: dict[str, LoadFailure]
    models: dict[str, ModelStats]
    last_error: str | None
    now: float  # monotonic: what the failures' retry times are measured against

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "memory": self.memory.as_dict(),
            "slot": self.slot.as_dict(),
            "queue": {"length": self.queue_length, "by_model": self.queue_by_model},
            "swaps": [s.as_dict() for s in self.swaps],
            "failures": {m: f.as_dict(self.now) for m, f in self.failures.items()},
            "models": {m: s.as_dict() for m, s in self.models.items()},
            "last_error": self.last_error,
        }
