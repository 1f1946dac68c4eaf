"""Prometheus metrics, ``zoe_*``: fed by the same per-request record as the ledger.

Each app has its own ``CollectorRegistry`` (several apps in one test process must not collide).
Figures the supervisor already keeps (state, queue depth) are read at scrape time by a custom
collector, so nothing polls. Labels carry key ids, never keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from zoe_edge import __version__
from zoe_edge.usage.record import UsageRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MB = 1024 * 1024
SLOT_STATES = ("unloaded", "loading", "ready", "busy", "unloading", "failed")


class _SupervisorCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]], ledger: Callable[[], dict[str, Any]] | None) -> None:
        self.status = status
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        state = GaugeMetricFamily("zoe_supervisor_state", "1 for the slot's current state", labels=["state"])
        current = status["slot"]["state"]
        for name in SLOT_STATES:
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
        yield GaugeMetricFamily(
            "zoe_queue_depth", "requests waiting for the local slot", value=status["queue"]["length"]
        )
        yield from _scheduling(status)
        loaded = GaugeMetricFamily("zoe_model_loaded", "1 for the model in the slot", labels=["model"])
        if status["slot"]["model"] and current in ("ready", "busy"):
            loaded.add_metric([status["slot"]["model"]], 1.0)
        yield loaded
        if self.ledger is not None:
            ledger = self.ledger()
            yield GaugeMetricFamily(
                "zoe_ledger_healthy", "1 while usage rows are being written", value=1.0 if ledger["healthy"] else 0.0
            )
            yield GaugeMetricFamily(
                "zoe_ledger_failed_rows", "usage rows lost to write failures", value=ledger["rows_failed"]
            )


def _scheduling(status: dict[str, Any]) -> Iterator[Metric]:
    """Queue by priority, suspensions and how well admission predicts waits (from ``/admin/status``)."""
    by_priority = GaugeMetricFamily("zoe_queue_depth_by_priority", "requests waiting, by priority", labels=["priority"])
    for priority, count in status["queue"].get("by_priority", {}).items():
        by_priority.add_metric([priority], count)
    yield by_priority
    sched = status.get("scheduling")
    if not sched:
        return
    suspension = sched["suspension"]
    yield GaugeMetricFamily(
        "zoe_generation_suspended",
        "1 while a background generation is paused",
        value=1.0 if sched["suspended"] else 0.0,
    )
    for name, key, doc in (
        ("zoe_suspensions", "suspensions", "background generations paused for interactive requests"),
        ("zoe_resumes", "resumes", "paused background generations resumed"),
        ("zoe_suspend_refusals", "refusals", "suspensions the worker refused (no room, or it ended first)"),
    ):
        yield CounterMetricFamily(name, doc, value=suspension[key])
    yield CounterMetricFamily(
        "zoe_suspended_seconds", "time background generations spent paused", value=suspension["paused_ms_total"] / 1000
    )
    yield CounterMetricFamily(
        "zoe_suspend_cost_seconds", "saving and restoring paused generations", value=suspension["cost_ms_total"] / 1000
    )
    prediction = sched["prediction"]
    error = GaugeMetricFamily(
        "zoe_wait_prediction_abs_error_seconds",
        "absolute error of admission's predicted wait over recent queued requests (actual - predicted)",
        labels=["quantile"],
    )
    for quantile, key in (("0.5", "abs_error_p50_s"), ("0.95", "abs_error_p95_s"), ("1", "abs_error_max_s")):
        if prediction[key] is not None:
            error.add_metric([quantile], prediction[key])
    yield error
    yield CounterMetricFamily(
        "zoe_wait_predictions", "queued requests whose wait was predicted", value=prediction["samples"]
    )
    yield CounterMetricFamily(
        "zoe_deadline_expired",
        "requests still queued when their deadline passed (they left)",
        value=prediction["expired"],
    )
    yield CounterMetricFamily(
        "zoe_deadline_refused",
        "requests refused at once: the predicted wait exceeded the deadline",
        value=prediction["refused"],
    )


class _HardwareCollector(Collector):
    """Board gauges from the telemetry sampler's newest sample (jtop, tegrastats or psutil), read at scrape time."""

    def __init__(self, latest: Callable[[], dict[str, Any] | None]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sample = self.latest()
        if sample is None:
            return
        temps = GaugeMetricFamily("zoe_temperature_celsius", "board temperature by sensor", labels=["sensor"])
        for sensor, value in sorted(sample["temps"].items()):
            if value is not None:
                temps.add_metric([sensor], float(value))
        yield temps
        thermal = GaugeMetricFamily("zoe_thermal_state", "1 for the current thermal state", labels=["state"])
        thermal.add_metric([sample["thermal"]["state"]], 1.0)
        yield thermal
        power, memory = sample["power"], sample["memory"]
        figures = (
            ("zoe_power_watts", "board input power", power["total_mw"], 1e-3),
            ("zoe_ram_used_bytes", "RAM in use", memory["ram_used_mb"], MB),
            ("zoe_ram_total_bytes", "RAM in all", memory["ram_total_mb"], MB),
            ("zoe_ram_available_bytes", "RAM available", memory["ram_available_mb"], MB),
            ("zoe_swap_used_bytes", "swap in use", memory["swap_used_mb"], MB),
            ("zoe_gpu_load_ratio", "GPU load", sample["gpu"]["load_pct"], 0.01),
            ("zoe_cpu_load_ratio", "CPU load over all cores", sample["cpu"]["load_pct"], 0.01),
        )
        for name, doc, value, scale in figures:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value) * scale)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("zoe_requests", "generation requests", ["route", "target", "status"], registry=r)
        self.duration = Histogram(
            "zoe_request_duration_seconds",
            "generation request duration",
            ["locality"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "zoe_ttft_seconds", "time to the first event", ["locality"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("zoe_tokens", "tokens by kind (prompt, completion, cached)", ["kind"], registry=r)
        self.cached_prompt = Counter(
            "zoe_prompt_cached_tokens", "prompt tokens reused from the model's prefix cache", registry=r
        )
        self.prefix_hits = Counter("zoe_prefix_hits", "requests that reused a cached prompt prefix", registry=r)
        self.fallbacks = Counter("zoe_fallbacks", "targets passed over, by failure kind", ["reason"], registry=r)
        self.cache = Counter("zoe_cache_requests", "response cache lookups by outcome", ["status"], registry=r)
        self.cost = Counter("zoe_cost_usd", "cloud spend in US dollars", ["key"], registry=r)
        self.rate_limited = Counter(
            "zoe_rate_limited", "requests refused by a key's limits", ["key", "limit"], registry=r
        )
        self.swaps = Counter("zoe_swaps", "model loads into the slot", ["model"], registry=r)
        self.load_duration = Histogram(
            "zoe_load_duration_seconds", "model load (swap) duration", buckets=LOAD_BUCKETS, registry=r
        )
        Gauge("zoe_info", "build information", ["version"], registry=r).labels(__version__).set(1)

    def watch(self, status: Callable[[], dict[str, Any]], ledger: Callable[[], dict[str, Any]] | None) -> None:
        self.registry.register(_SupervisorCollector(status, ledger))

    def watch_hardware(self, latest: Callable[[], dict[str, Any] | None]) -> None:
        self.registry.register(_HardwareCollector(latest))

    def observe(self, rec: UsageRecord) -> None:
        route = rec.route or "-"
        self.requests.labels(route, rec.target or "-", str(rec.status)).inc()
        locality = rec.locality or "none"
        self.duration.labels(locality).observe(rec.duration_ms / 1000)
        if rec.ttft_ms is not None:
            self.ttft.labels(locality).observe(rec.ttft_ms / 1000)
        if rec.prompt_tokens:
            self.tokens.labels("prompt").inc(rec.prompt_tokens)
        if rec.completion_tokens:
            self.tokens.labels("completion").inc(rec.completion_tokens)
        if rec.cached_tokens > 0:
            self.tokens.labels("cached").inc(rec.cached_tokens)
            self.cached_prompt.inc(rec.cached_tokens)
            self.prefix_hits.inc()
        for kind in rec.skipped:
            self.fallbacks.labels(kind.value).inc()
        if rec.cache is not None:
            self.cache.labels(rec.cache).inc()
        if rec.cost_usd > 0:
            self.cost.labels(rec.key_id or "-").inc(rec.cost_usd)

    def swapped(self, swap: dict[str, Any]) -> None:
        self.swaps.labels(str(swap.get("to"))).inc()
        self.load_duration.observe(float(swap.get("duration_ms") or 0.0) / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
