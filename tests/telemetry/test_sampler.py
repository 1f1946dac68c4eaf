"""The sampler: fixed interval, bounded ring buffer, snapshot/history, thermal state, subscribers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.telemetry.helpers import NANO, THROTTLED, lines
from zoe_edge.telemetry.policy import ThermalLimits
from zoe_edge.telemetry.probe import Source
from zoe_edge.telemetry.sampler import DEFAULT_HISTORY_S, DEFAULT_INTERVAL_S, Sampler, compact
from zoe_edge.telemetry.tegrastats import Reading, parse_line


class Scripted(Source):
    """Hands out the given readings in turn (``None`` = no fresh reading), then repeats the last."""

    name = "scripted"

    def __init__(self, readings: list[Reading | None]) -> None:
        super().__init__()
        self.readings = readings
        self.reason = "scripted for the test"
        self.closed = False
        self.i = 0

    async def read(self) -> Reading | None:
        r = self.readings[min(self.i, len(self.readings) - 1)]
        self.i += 1
        return r

    async def close(self) -> None:
        self.closed = True


def hot(tj: float) -> Reading:
    r = parse_line(lines(THROTTLED)[0])
    r.temps["tj"] = tj
    return r


def sampler_with(readings: list[Reading | None], **kwargs: Any) -> tuple[Sampler, Scripted]:
    source = Scripted(readings)

    async def choose(interval: float) -> Source:
        return source

    sampler = Sampler(choose=choose, **kwargs)
    sampler.source = source
    return sampler, source


def test_defaults_are_one_hertz_and_fifteen_minutes() -> None:
    sampler = Sampler()
    assert (DEFAULT_INTERVAL_S, DEFAULT_HISTORY_S) == (1.0, 900.0)
    assert sampler.capacity == 900 and sampler.snapshot() is None and sampler.history() == []
    assert Sampler(interval_s=0.5, history_s=60).capacity == 120
    with pytest.raises(ValueError):
        Sampler(interval_s=0)


async def test_ring_buffer_is_bounded_and_history_is_compact() -> None:
    readings = [parse_line(line, at=1000.0 + i) for i, line in enumerate(lines(NANO) * 4)]  # 12 readings
    sampler, _ = sampler_with(readings, interval_s=1.0, history_s=5.0)
    for _ in range(12):
        await sampler.sample_once()
    history = sampler.history()
    assert len(history) == 5 and sampler.capacity == 5
    assert [h["seq"] for h in history] == [8, 9, 10, 11, 12]
    assert [h["t"] for h in history] == [1007.0, 1008.0, 1009.0, 1010.0, 1011.0]
    last = history[-1]
    # the 12th reading is the Nano's third (idle) line
    assert last["temps"]["tj"] == 57.75 and last["power_mw"] == 6120
    assert last["rails"] == {"VDD_IN": 6120.0, "VDD_CPU_GPU_CV": 1210.0, "VDD_SOC": 2410.0}
    assert (last["ram_used_mb"], last["gpu_load_pct"], last["gpu_freq_mhz"]) == (6718, 0, 306)
    assert [h["seq"] for h in sampler.history(seconds=2.5)] == [10, 11, 12]
    snapshot = sampler.snapshot()
    assert snapshot is not None and snapshot["seq"] == 12 and snapshot["source"] == "tegrastats"
    assert snapshot["memory"]["swap_used_mb"] == 369 and snapshot["cpu"]["cores"][0]["freq_mhz"] == 1497
    assert compact(snapshot) == last


async def test_thermal_state_follows_the_readings_with_hysteresis() -> None:
    limits = ThermalLimits(soft_c=85, hard_c=99, hysteresis_c=5)
    sampler, _ = sampler_with([hot(70), hot(96.125), hot(84), hot(81), hot(79.5)], limits=limits)
    states = []
    for _ in range(5):
        sample = await sampler.sample_once()
        states.append(sample["thermal"]["state"])
    assert states == ["normal", "soft", "soft", "soft", "normal"]
    assert sampler.temperature() == 79.5 and sampler.temperature("cpu") == 94.812
    sampler2, _ = sampler_with([hot(96.125)], limits=limits)
    sample = await sampler2.sample_once()
    assert sample["thermal"] == {
        "state": "soft",
        "reason": "tj 96.1 C is at or above the soft limit 85 C",
        "sensor": "tj",
        "temp_c": 96.125,
        "soft_c": 85,
        "hard_c": 99,
        "hysteresis_c": 5,
    }
    assert [w["kind"] for w in sample["warnings"]] == ["thermal"]


async def test_a_missing_reading_is_stale_and_keeps_the_thermal_state() -> None:
    sampler, _ = sampler_with([hot(90), None])
    await sampler.sample_once()
    sample = await sampler.sample_once()
    assert sample["stale"] is True and sample["temps"] == {} and sample["thermal"]["state"] == "soft"
    assert any(w["kind"] == "telemetry" for w in sample["warnings"])
    assert sampler.temperature() is None


async def test_daemon_figures_are_included_and_their_failure_is_contained() -> None:
    calls = {"n": 0}

    def figures() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("supervisor mid-swap")
        return {"model": "smollm2-135m", "state": "ready", "queue": 2, "tokens_per_s": 41.5, "memory_reserve_mb": 1e6}

    sampler, _ = sampler_with([hot(50)], daemon=figures)
    first = await sampler.sample_once()
    assert first["daemon"]["model"] == "smollm2-135m" and first["daemon"]["queue"] == 2
    assert compact(first)["tokens_per_s"] == 41.5 and compact(first)["queue"] == 2
    # reserve larger than available memory: a memory-pressure warning
    assert [w["kind"] for w in first["warnings"]] == ["memory"]
    second = await sampler.sample_once()
    assert second["daemon"] == {} and second["seq"] == 2


async def test_subscribers_get_every_sample_and_slow_ones_lose_the_oldest() -> None:
    sampler, _ = sampler_with([hot(50)])
    fast = sampler.subscribe()
    slow = sampler.subscribe(maxsize=2)
    for _ in range(4):
        await sampler.sample_once()
    assert [fast.get_nowait()["seq"] for _ in range(4)] == [1, 2, 3, 4]  # type: ignore[index]
    assert [slow.get_nowait()["seq"] for _ in range(2)] == [3, 4]  # type: ignore[index]
    sampler.unsubscribe(fast)
    await sampler.sample_once()
    assert fast.empty() and slow.get_nowait()["seq"] == 5  # type: ignore[index]
    sampler.end_streams()
    assert slow.get_nowait() is None and sampler.subscribers == 0


async def test_background_sampling_at_the_interval_then_close() -> None:
    sampler, source = sampler_with([hot(50)], interval_s=0.1)
    queue = sampler.subscribe()
    await sampler.start()
    got, times = [], []
    for _ in range(4):
        got.append(await asyncio.wait_for(queue.get(), 2))
        times.append(time.monotonic())
    assert [g["seq"] for g in got if g] == [1, 2, 3, 4]
    assert sampler.reason == "scripted for the test"
    # three intervals of 0.1 s between the first and the fourth (generous: the machine is shared)
    assert 0.25 <= times[3] - times[0] <= 1.5
    await sampler.close()
    assert source.closed and await asyncio.wait_for(queue.get(), 1) is None
    seq = sampler.seq
    await asyncio.sleep(0.25)
    assert sampler.seq == seq  # stopped


async def test_a_chooser_that_fails_leaves_a_reason() -> None:
    async def choose(interval: float) -> Source:
        raise OSError("/proc/meminfo is not readable")

    sampler = Sampler(choose=choose)
    await sampler.start()
    for _ in range(50):
        if sampler.reason != "starting":
            break
        await asyncio.sleep(0.01)
    assert sampler.reason == "no telemetry source works here: /proc/meminfo is not readable"
    await sampler.close()
