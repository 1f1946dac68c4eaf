"""One sampler: reads the chosen source at a fixed interval into a bounded ring buffer.

Each sample is the board's reading (see :meth:`Reading.as_dict`) plus the daemon's own figures,
the thermal state (with hysteresis, :func:`~zoe_edge.telemetry.policy.thermal_state`) and the
warnings the dashboard shows. ``snapshot()`` is the newest full sample, ``history()`` a compact
series of the last 15 minutes, ``subscribe()`` a queue that receives every new sample (SSE).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from zoe_edge.telemetry.policy import ThermalLimits, ThermalState, sensor_temperature, thermal_state, warnings_for
from zoe_edge.telemetry.probe import Source, choose_source
from zoe_edge.telemetry.tegrastats import Reading

log = logging.getLogger("zoe_edge.telemetry")

DEFAULT_INTERVAL_S = 1.0
DEFAULT_HISTORY_S = 15 * 60.0
DaemonFigures = Callable[[], dict[str, Any]]
Chooser = Callable[[float], Awaitable[Source]]


def compact(sample: dict[str, Any]) -> dict[str, Any]:
    """The few figures a chart needs from one sample (the history is 900 of these)."""
    power = sample.get("power") or {}
    memory = sample.get("memory") or {}
    gpu = sample.get("gpu") or {}
    daemon = sample.get("daemon") or {}
    return {
        "t": sample["at"],
        "seq": sample["seq"],
        "temps": sample.get("temps") or {},
        "power_mw": power.get("total_mw"),
        "rails": {name: rail["inst_mw"] for name, rail in (power.get("rails") or {}).items()},
        "ram_used_mb": memory.get("ram_used_mb"),
        "ram_total_mb": memory.get("ram_total_mb"),
        "swap_used_mb": memory.get("swap_used_mb"),
        "gpu_load_pct": gpu.get("load_pct"),
        "gpu_freq_mhz": max(gpu.get("freq_mhz") or [0]) or None,
        "cpu_load_pct": (sample.get("cpu") or {}).get("load_pct"),
        "thermal": (sample.get("thermal") or {}).get("state"),
        "tokens_per_s": daemon.get("tokens_per_s"),
        "queue": daemon.get("queue"),
    }


class Sampler:
    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        history_s: float = DEFAULT_HISTORY_S,
        *,
        daemon: DaemonFigures | None = None,
        limits: ThermalLimits | None = None,
        choose: Chooser = choose_source,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the sampling interval must be positive")
        self.interval_s = interval_s
        self.limits = limits or ThermalLimits()
        self.source: Source | None = None
        self.reason = "starting"
        self.thermal = ThermalState.NORMAL
        self.thermal_reason = "no reading yet"
        self.seq = 0
        self._daemon = daemon
        self._choose = choose
        self._history: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=max(1, round(history_s / interval_s))
        )
        self._latest: dict[str, Any] | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._daemon_failed = False

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Choose the source and sample in the background (returns at once)."""
        self._task = asyncio.create_task(self._run(), name="zoe-telemetry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.source is not None:
            await self.source.close()
        self.end_streams()

    async def _run(self) -> None:
        try:
            self.source = await self._choose(self.interval_s)
        except Exception as exc:
            self.reason = f"no telemetry source works here: {exc}"
            log.error("%s", self.reason)
            return
        self.reason = self.source.reason
        log.info("telemetry from %s", self.reason)
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            try:
                await self.sample_once()
            except Exception:  # one bad reading must not end the sampling
                log.exception("telemetry sample failed")
            next_tick += self.interval_s
            now = loop.time()
            if next_tick < now:  # fell behind (a stalled loop): skip, do not catch up in a burst
                next_tick = now + self.interval_s
            await asyncio.sleep(next_tick - now)

    # --- sampling -------------------------------------------------------------------------------

    def _daemon_figures(self) -> dict[str, Any]:
        if self._daemon is None:
            return {}
        try:
            figures = self._daemon()
        except Exception:
            if not self._daemon_failed:
                log.exception("daemon figures for telemetry failed")
                self._daemon_failed = True
            return {}
        self._daemon_failed = False
        return figures

    async def sample_once(self) -> dict[str, Any]:
        """Take one sample now, store it and hand it to every subscriber."""
        source = self.source
        reading = await source.read() if source is not None else None
        stale = reading is None
        if reading is None:
            reading = Reading(source=source.name if source else "none")
        sample = reading.as_dict()
        self.seq += 1
        sample["seq"] = self.seq
        sample["at"] = time.time() if stale else reading.at
        sample["stale"] = stale
        sample["interval_s"] = self.interval_s
        sample["daemon"] = self._daemon_figures()
        temp, sensor = sensor_temperature(reading.temps, self.limits.sensor)
        if not stale:
            self.thermal, self.thermal_reason = thermal_state(
                temp,
                self.thermal,
                self.limits.soft_c,
                self.limits.hard_c,
                self.limits.hysteresis_c,
                sensor=sensor,
            )
        sample["thermal"] = {
            "state": self.thermal.value,
            "reason": self.thermal_reason,
            "sensor": sensor,
            "temp_c": temp,
            "soft_c": self.limits.soft_c,
            "hard_c": self.limits.hard_c,
            "hysteresis_c": self.limits.hysteresis_c,
        }
        sample["warnings"] = warnings_for(
            sample, self.thermal, self.thermal_reason, sample["daemon"].get("memory_reserve_mb")
        )
        if stale:
            sample["warnings"].append(
                {"kind": "telemetry", "level": "warning", "message": f"no fresh reading from {reading.source}"}
            )
        self._latest = sample
        self._history.append(compact(sample))
        self._publish(sample)
        return sample

    # --- reading ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        """The newest full sample (``None`` before the first)."""
        return self._latest

    def history(self, seconds: float | None = None) -> list[dict[str, Any]]:
        """Compact samples, oldest first; the last ``seconds`` only when given."""
        items = list(self._history)
        if seconds is None or not items:
            return items
        cutoff = items[-1]["t"] - seconds
        return [item for item in items if item["t"] > cutoff]

    @property
    def capacity(self) -> int:
        return self._history.maxlen or 0

    def temperature(self, sensor: str | None = None) -> float | None:
        """The newest temperature of ``sensor`` (default: the thermal limits' sensor, tj); ``None`` if unknown."""
        latest = self._latest
        if latest is None or latest.get("stale"):
            return None
        return sensor_temperature(latest.get("temps") or {}, sensor or self.limits.sensor)[0]

    # --- streaming ------------------------------------------------------------------------------

    def subscribe(self, maxsize: int = 16) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue that receives every new sample; ``None`` means the stream ends (shutdown)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _publish(self, item: dict[str, Any] | None) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a slow reader loses its oldest sample, never blocks the sampler
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(item)

    def end_streams(self) -> None:
        """Tell every stream to finish (on shutdown, so open dashboards do not hold the drain)."""
        self._publish(None)
        self._subscribers.clear()
