"""Typed records of what the slot did and where it stands.

``/admin/status``, the dashboard (through the telemetry sampler) and the metrics read these as
JSON; each ``as_dict`` writes the shape they have always read, so the types can change without
the wire changing.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoe_edge.canonical import Priority
    from zoe_edge.worker.control import Suspended


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


class PredictionLog:
    """How well admission predicted the wait of the requests it queued behind something (a running
    request, a queue, a load): error = actual - predicted."""

    def __init__(self, keep: int = 500) -> None:
        self.errors: collections.deque[float] = collections.deque(maxlen=keep)
        self.by_priority: collections.Counter[str] = collections.Counter()
        self.count = 0
        self.refused = 0  # turned away at once: the prediction exceeded the deadline
        self.expired = 0  # admitted, still queued when the deadline passed: the clock caught the prediction
        self.sum_abs_s = 0.0

    def record(self, predicted_s: float, actual_s: float, priority: Priority) -> None:
        error = actual_s - predicted_s
        self.errors.append(error)
        self.by_priority[priority.value] += 1
        self.count += 1
        self.sum_abs_s += abs(error)

    def as_dict(self) -> dict[str, Any]:
        errors = list(self.errors)
        absolute = sorted(abs(e) for e in errors)
        late = sum(1 for e in errors if e > 0)

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "samples": self.count,
            "recent": len(errors),
            "error_p50_s": r(_quantile(sorted(errors), 0.5)),
            "abs_error_p50_s": r(_quantile(absolute, 0.5)),
            "abs_error_p95_s": r(_quantile(absolute, 0.95)),
            "abs_error_max_s": r(absolute[-1] if absolute else None),
            "mean_abs_error_s": r(self.sum_abs_s / self.count if self.count else None),
            "waited_longer_than_predicted": late,
            "refused": self.refused,
            "expired": self.expired,
        }


@dataclass
class SuspensionStats:
    """Background generations paused for interactive requests, and what it cost."""

    suspensions: int = 0
    resumes: int = 0
    refusals: int = 0
    last_refusal: str | None = None
    last_state_bytes: int = 0
    last_save_ms: float = 0.0
    last_ack_ms: float = 0.0  # from asking to the worker's answer: the next token plus the save
    paused_ms_total: float = 0.0  # from the finished generations' timings
    cost_ms_total: float = 0.0  # saving and restoring, from the same timings

    def suspended(self, done: Suspended, ack_ms: float) -> None:
        self.suspensions += 1
        self.last_state_bytes = done.state_bytes
        self.last_save_ms = done.save_ms
        self.last_ack_ms = ack_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "suspensions": self.suspensions,
            "resumes": self.resumes,
            "refusals": self.refusals,
            "last_refusal": self.last_refusal,
            "last_state_mb": round(self.last_state_bytes / (1024 * 1024), 2),
            "last_save_ms": round(self.last_save_ms, 2),
            "last_ack_ms": round(self.last_ack_ms, 2),
            "paused_ms_total": round(self.paused_ms_total, 1),
            "cost_ms_total": round(self.cost_ms_total, 2),
        }


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
class Rate:
    """A decayed ratio of sums (seconds per token, tokens per character): a long sample weighs as much as
    it is long, so a 2k-token prompt is not outvoted by short ones whose fixed overhead dominates, and
    old samples fade."""

    amount: float = 0.0
    per: float = 0.0
    decay: float = 0.9

    def add(self, amount: float, per: float) -> None:
        self.amount = self.amount * self.decay + amount
        self.per = self.per * self.decay + per

    @property
    def value(self) -> float | None:
        return self.amount / self.per if self.per > 0 else None


@dataclass
class LineFit:
    """Seconds = overhead + per-token x tokens, fitted by decayed least squares over recent prompts.

    A prompt costs a fixed part (the first batch's set-up, sampling the first token) and a part per
    token; a single ratio would let a few short prompts, all overhead, make a long one look ten times
    slower than it is. Until the prompts differ enough in length to separate the two, the fit is the
    ratio of sums through zero.
    """

    n: float = 0.0
    x: float = 0.0
    y: float = 0.0
    xx: float = 0.0
    xy: float = 0.0
    decay: float = 0.9

    def add(self, tokens: float, seconds: float) -> None:
        d = self.decay
        self.n = self.n * d + 1
        self.x = self.x * d + tokens
        self.y = self.y * d + seconds
        self.xx = self.xx * d + tokens * tokens
        self.xy = self.xy * d + tokens * seconds

    def fit(self) -> tuple[float, float] | None:
        """(overhead s, s per token), or ``None`` before the first sample."""
        if self.n <= 0 or self.x <= 0:
            return None
        mean_x, mean_y = self.x / self.n, self.y / self.n
        var = self.xx / self.n - mean_x * mean_x
        if var > (0.25 * mean_x) ** 2:  # lengths spread by a quarter of their mean or more
            slope = (self.xy / self.n - mean_x * mean_y) / var
            overhead = mean_y - slope * mean_x
            if slope > 0 and overhead >= 0:
                return overhead, slope
        return 0.0, self.y / self.x

    def seconds(self, tokens: float) -> float | None:
        fitted = self.fit()
        return None if fitted is None else fitted[0] + fitted[1] * tokens


@dataclass
class ModelStats:
    requests: int = 0
    service_s: float | None = None
    load_s: float | None = None
    crashes: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=10))
    # measured from finished generations; admission predicts waits from them
    prompt_fit: LineFit = field(default_factory=LineFit)  # seconds for a prompt of n tokens evaluated
    decode_rate: Rate = field(default_factory=Rate)  # seconds per generated token
    char_rate: Rate = field(default_factory=Rate)  # prompt tokens per character of text (template included)
    completion_tokens: float | None = None
    cached_share: float | None = None

    @property
    def prompt_s_per_token(self) -> float | None:
        fitted = self.prompt_fit.fit()
        return None if fitted is None else fitted[1]

    @property
    def prompt_overhead_s(self) -> float | None:
        fitted = self.prompt_fit.fit()
        return None if fitted is None else fitted[0]

    @property
    def decode_s_per_token(self) -> float | None:
        return self.decode_rate.value

    @property
    def tokens_per_char(self) -> float | None:
        return self.char_rate.value

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None, digits: int = 3) -> float | None:
            return None if x is None else round(x, digits)

        def ms(x: float | None) -> float | None:
            return None if x is None else round(x * 1000, 3)

        return {
            "requests": self.requests,
            "mean_request_s": r(self.service_s),
            "load_s": r(self.load_s),
            "prompt_ms_per_token": ms(self.prompt_s_per_token),
            "prompt_overhead_ms": ms(self.prompt_overhead_s),
            "decode_ms_per_token": ms(self.decode_s_per_token),
            "typical_completion_tokens": r(self.completion_tokens, 1),
            "cached_share": r(self.cached_share),
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
    queue_by_priority: dict[str, int]
    scheduling: dict[str, Any]  # who holds the slot, what is suspended, the prediction's error
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
            "queue": {
                "length": self.queue_length,
                "by_model": self.queue_by_model,
                "by_priority": self.queue_by_priority,
            },
            "scheduling": self.scheduling,
            "swaps": [s.as_dict() for s in self.swaps],
            "failures": {m: f.as_dict(self.now) for m, f in self.failures.items()},
            "models": {m: s.as_dict() for m, s in self.models.items()},
            "last_error": self.last_error,
        }
