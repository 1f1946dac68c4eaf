"""thermal_state: soft and hard limits with hysteresis, no flapping; the sensor lookup; warnings."""

from __future__ import annotations

import itertools

import pytest

from zoe_edge.telemetry.policy import (
    ThermalLimits,
    ThermalState,
    sensor_temperature,
    thermal_state,
    warnings_for,
)

N, S, H = ThermalState.NORMAL, ThermalState.SOFT, ThermalState.HARD
SOFT, HARD, HYST = 85.0, 95.0, 5.0


def run(temps: list[float | None], start: ThermalState = N) -> list[ThermalState]:
    state = start
    out = []
    for t in temps:
        state, _ = thermal_state(t, state, SOFT, HARD, HYST)
        out.append(state)
    return out


@pytest.mark.parametrize(
    ("temp", "previous", "expected"),
    [
        (60.0, N, N),
        (84.9, N, N),
        (85.0, N, S),  # the limit itself counts as reached
        (90.0, N, S),
        (95.0, N, H),
        (101.0, S, H),
        (82.0, S, S),  # cooling but within the hysteresis band: stays soft
        (80.0, S, N),  # at soft - hysteresis: back to normal
        (92.0, H, H),  # cooling from hard, not yet under 90
        (90.0, H, S),  # under hard - hysteresis: soft (still above the soft limit)
        (82.0, H, S),  # from hard straight into soft's hysteresis band
        (79.0, H, N),
        (84.0, N, N),  # rising below the limit: the band does not apply
    ],
)
def test_single_steps(temp: float, previous: ThermalState, expected: ThermalState) -> None:
    state, reason = thermal_state(temp, previous, SOFT, HARD, HYST)
    assert state == expected
    assert f"{temp:.1f} C" in reason and reason.startswith("tj ")
    assert reason.isascii()  # fit for a response header


def test_no_flapping_around_the_soft_limit() -> None:
    # a sensor wobbling +-1 C around the soft limit changes state once, not on every reading
    wobble = [84.0, 85.5, 84.2, 85.1, 83.9, 85.0, 84.5, 83.0, 84.9]
    states = run(wobble)
    assert states == [N] + [S] * 8
    changes = sum(1 for a, b in itertools.pairwise(states) if a != b)
    assert changes == 1
    # it takes a real cool-down to return to normal
    assert run([86.0, 81.0, 80.1, 79.9])[-1] == N
    assert run([86.0, 81.0, 80.1])[-1] == S


def test_no_flapping_around_the_hard_limit() -> None:
    states = run([96.0, 94.0, 95.5, 93.0, 90.5, 89.9, 88.0, 80.5, 79.0])
    assert states == [H, H, H, H, H, S, S, S, N]


def test_reasons_say_why_and_until_when() -> None:
    assert thermal_state(96.125, N, SOFT, HARD, HYST, sensor="tj") == (
        H,
        "tj 96.1 C is at or above the hard limit 95 C",
    )
    state, reason = thermal_state(82.0, S, SOFT, HARD, HYST, sensor="gpu")
    assert state == S and reason == "gpu 82.0 C is cooling; stays soft until under 80 C"
    state, reason = thermal_state(70.0, S, SOFT, HARD, HYST)
    assert state == N and "under the soft limit 85 C" in reason


def test_no_reading_keeps_the_previous_state() -> None:
    assert run([90.0, None, None]) == [S, S, S]
    state, reason = thermal_state(None, H, SOFT, HARD, HYST)
    assert state == H and "no reading" in reason


def test_zero_hysteresis_switches_at_the_limit() -> None:
    assert thermal_state(84.99, S, SOFT, HARD, 0.0)[0] == N


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="hard limit"):
        thermal_state(50.0, N, 90.0, 80.0, 5.0)
    with pytest.raises(ValueError, match="hysteresis"):
        ThermalLimits(soft_c=80.0, hard_c=90.0, hysteresis_c=-1.0)
    assert ThermalLimits().sensor == "tj" and ThermalLimits().soft_c < ThermalLimits().hard_c


def test_sensor_temperature_defaults_to_tj_with_fallbacks() -> None:
    orin = {"cpu": 57.1, "tj": 58.3, "gpu": 58.6}
    assert sensor_temperature(orin) == (58.3, "tj")
    assert sensor_temperature(orin, "GPU") == (58.6, "gpu")
    # Xavier has no tj: its "thermal" zone stands in
    assert sensor_temperature({"cpu": 46.5, "thermal": 45.6}) == (45.6, "thermal")
    # no tj-like zone at all: the hottest online sensor
    assert sensor_temperature({"a": 40.0, "b": None, "c": 47.0}) == (47.0, "c")
    assert sensor_temperature({"soc1": None}, "soc1") == (None, "soc1")
    assert sensor_temperature({}, "tj") == (None, "tj")
    assert sensor_temperature({"cpu": 50.0}, "missing") == (None, "missing")


def test_warnings() -> None:
    sample = {
        "memory": {"ram_available_mb": 300.0, "ram_total_mb": 7620.0, "swap_used_mb": 369.0},
        "daemon": {"failures": {"gemma": {"reason": "bad file", "count": 2}}},
    }
    found = warnings_for(sample, S, "tj 90.0 C is at or above the soft limit 85 C", reserve_mb=1024)
    kinds = {w["kind"]: w for w in found}
    assert set(kinds) == {"thermal", "memory", "swap", "model"}
    assert kinds["thermal"]["level"] == "warning" and "soft limit" in kinds["thermal"]["message"]
    assert "under the 1024 MB reserve" in kinds["memory"]["message"]
    assert "gemma" in kinds["model"]["message"] and "bad file" in kinds["model"]["message"]
    assert warnings_for(sample, H, "hot", reserve_mb=None)[0]["level"] == "critical"
    calm = {"memory": {"ram_available_mb": 4000.0, "ram_total_mb": 7620.0, "swap_used_mb": 369.0}}
    assert warnings_for(calm, N, "", reserve_mb=1024) == []
