"""Pure decisions on telemetry: thermal state with hysteresis, the sensor to watch, warnings.

No I/O here: routing and the sampler call these with figures they already hold, and the tests call
them with plain numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Orin's software throttling starts at 99 C on tj; above soft, requests with a fallback leave the board
DEFAULT_SENSOR = "tj"
DEFAULT_SOFT_C = 85.0
DEFAULT_HARD_C = 99.0
DEFAULT_HYSTERESIS_C = 5.0
# Xavier (JetPack 5) has no "tj": its "thermal" zone is the hottest point of the SoC
SENSOR_ALIASES: dict[str, tuple[str, ...]] = {"tj": ("tj", "thermal")}


class ThermalState(str, enum.Enum):
    NORMAL = "normal"  # local generation as usual
    SOFT = "soft"  # above the soft limit: requests with a fallback go elsewhere
    HARD = "hard"  # above the hard limit: no local generation starts


@dataclass(frozen=True)
class ThermalLimits:
    sensor: str = DEFAULT_SENSOR
    soft_c: float = DEFAULT_SOFT_C
    hard_c: float = DEFAULT_HARD_C
    hysteresis_c: float = DEFAULT_HYSTERESIS_C

    def __post_init__(self) -> None:
        _check_limits(self.soft_c, self.hard_c, self.hysteresis_c)


def _check_limits(soft: float, hard: float, hysteresis: float) -> None:
    if hard < soft:
        raise ValueError(f"the hard limit ({hard} C) must not be below the soft limit ({soft} C)")
    if hysteresis < 0:
        raise ValueError(f"hysteresis must not be negative (got {hysteresis} C)")


def thermal_state(
    current_temp: float | None,
    previous_state: ThermalState,
    soft: float,
    hard: float,
    hysteresis: float,
    *,
    sensor: str = DEFAULT_SENSOR,
) -> tuple[ThermalState, str]:
    """The thermal state after one reading, and why, in words fit for a header or the dashboard.

    A state is entered at its limit (``temp >= soft`` / ``temp >= hard``) and left only once the
    temperature is ``hysteresis`` degrees under that limit, so a sensor hovering around a limit does
    not flap. With no reading (sensor offline or missing) the previous state stands. The reason is
    plain ASCII ("tj 96.1 C is at or above the soft limit 85 C"), so it can go in a response header.
    """
    _check_limits(soft, hard, hysteresis)
    if current_temp is None:
        return previous_state, f"{sensor} has no reading; staying {previous_state.value}"
    t = current_temp
    if t >= hard:
        return ThermalState.HARD, f"{sensor} {t:.1f} C is at or above the hard limit {hard:g} C"
    if previous_state == ThermalState.HARD and t > hard - hysteresis:
        return ThermalState.HARD, f"{sensor} {t:.1f} C is cooling; stays hard until under {hard - hysteresis:g} C"
    if t >= soft:
        return ThermalState.SOFT, f"{sensor} {t:.1f} C is at or above the soft limit {soft:g} C"
    if previous_state in (ThermalState.SOFT, ThermalState.HARD) and t > soft - hysteresis:
        return ThermalState.SOFT, f"{sensor} {t:.1f} C is cooling; stays soft until under {soft - hysteresis:g} C"
    return ThermalState.NORMAL, f"{sensor} {t:.1f} C is under the soft limit {soft:g} C"


def sensor_temperature(temps: Mapping[str, float | None], sensor: str = DEFAULT_SENSOR) -> tuple[float | None, str]:
    """The temperature of ``sensor`` (lower-case name) and the sensor actually read.

    ``tj`` falls back to Xavier's ``thermal`` zone, then to the hottest online sensor; any other
    name is read as is (``None`` when missing or offline).
    """
    name = sensor.lower()
    for candidate in SENSOR_ALIASES.get(name, (name,)):
        if candidate in temps:
            return temps[candidate], candidate
    if name == DEFAULT_SENSOR:
        online = {k: v for k, v in temps.items() if v is not None}
        if online:
            hottest = max(online, key=lambda k: online[k] or 0.0)
            return online[hottest], hottest
    return None, name


def warnings_for(
    sample: Mapping[str, Any], thermal: ThermalState, thermal_reason: str, reserve_mb: float | None
) -> list[dict[str, str]]:
    """Warnings the owner should see: thermal, memory pressure, swap in use, failed models."""
    out: list[dict[str, str]] = []
    if thermal != ThermalState.NORMAL:
        level = "critical" if thermal == ThermalState.HARD else "warning"
        out.append({"kind": "thermal", "level": level, "message": thermal_reason})
    memory = sample.get("memory") or {}
    available = memory.get("ram_available_mb")
    total = memory.get("ram_total_mb")
    if available is not None and reserve_mb is not None and available < reserve_mb:
        out.append(
            {
                "kind": "memory",
                "level": "warning",
                "message": f"memory pressure: {available:.0f} MB available, under the {reserve_mb:.0f} MB reserve",
            }
        )
    elif available is not None and total and available < 0.05 * total:
        out.append(
            {"kind": "memory", "level": "warning", "message": f"memory pressure: only {available:.0f} MB available"}
        )
    swap = memory.get("swap_used_mb")
    if swap and total and available is not None and available < 0.15 * total:
        out.append({"kind": "swap", "level": "warning", "message": f"{swap:.0f} MB swapped out while RAM is short"})
    daemon = sample.get("daemon") or {}
    for model, failure in (daemon.get("failures") or {}).items():
        out.append({"kind": "model", "level": "warning", "message": f"model {model} failed: {failure.get('reason')}"})
    return out
