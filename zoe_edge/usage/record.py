"""The per-request record, filled along the way by the middleware, ``open_generation`` and the event stream."""

from __future__ import annotations

from dataclasses import dataclass, field

from zoe_edge.canonical import Timings, Usage
from zoe_edge.errors import Failure

# the endpoints whose requests are generations (and get a ledger row even when they fail)
GENERATION_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completions",
        "/v1/responses",
        "/v1/messages",
        "/api/chat",
        "/api/generate",
        # embeddings count their prompt tokens the same way
        "/v1/embeddings",
        "/embeddings",
        "/api/embed",
        "/api/embeddings",
    }
)


@dataclass(slots=True)
class UsageRecord:
    ts: float  # wall clock when the request arrived
    started: float  # perf_counter at arrival, for durations
    request_id: str
    endpoint: str
    key_id: str | None = None
    requested: str | None = None  # the model name the client sent
    route: str | None = None  # the model, alias or route it resolved to
    target: str | None = None  # "local:<model>" or "<provider>:<model>"
    locality: str | None = None  # "local" | "cloud" | "cache"
    fallback_reason: str | None = None
    cache: str | None = None  # "hit" | "miss" | "bypass"; None when the cache did not look
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    cost_usd: float = 0.0
    status: int = 0
    error: str | None = None
    stream: bool = False
    priority: str | None = None  # interactive | normal | background, as the gateway chose it
    priority_reason: str | None = None  # which source decided (header, route, key, traffic default)
    # a background generation suspended for an interactive one: how often, how long, and what it cost
    suspensions: int = 0
    paused_ms: float = 0.0
    suspend_cost_ms: float = 0.0
    skipped: list[Failure] = field(default_factory=list)  # why each target passed over was, as kinds
    done: bool = False  # sent to the sinks (exactly once)

    def add_usage(self, usage: Usage) -> None:
        self.prompt_tokens = usage.prompt_tokens
        self.completion_tokens = usage.completion_tokens
        self.cached_tokens = usage.cached_tokens

    def add_timings(self, timings: Timings) -> None:
        self.suspensions = timings.suspensions
        self.paused_ms = round(timings.paused_ms, 3)
        self.suspend_cost_ms = round(timings.suspend_cost_ms, 3)


COLUMNS = (
    "ts",
    "request_id",
    "key_id",
    "endpoint",
    "requested",
    "route",
    "target",
    "locality",
    "fallback_reason",
    "cache",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "ttft_ms",
    "duration_ms",
    "cost_usd",
    "status",
    "error",
    # added with priorities (#18); an older ledger file gains them by migration (query.migrate)
    "priority",
    "priority_reason",
    "suspensions",
    "paused_ms",
    "suspend_cost_ms",
)


def row(rec: UsageRecord) -> tuple[object, ...]:
    return tuple(getattr(rec, c) for c in COLUMNS)
