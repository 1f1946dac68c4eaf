"""A real daemon on a pretend Orin NX (the ``board`` fixture in tests/conftest.py): a fake
``tegrastats`` on PATH prints the throttled fixture.

The probe must pick tegrastats, and /api/telemetry and the SSE stream must carry the fixture's values
together with the daemon's own figures.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import BOARD_KEY, Daemon, smollm_entry, start_daemon, write_registry
from tests.telemetry.helpers import NANO, THROTTLED, fake_tegrastats, lines
from zoe_edge.telemetry.tegrastats import parse_line

KEY = BOARD_KEY
FIXTURE = [parse_line(line) for line in lines(THROTTLED)]
TJ = {r.temps["tj"] for r in FIXTURE}  # 96.125, 96.75
POWER = {r.power_total_mw for r in FIXTURE}  # 24890, 21040


def telemetry(d: Daemon, **params: Any) -> dict[str, Any]:
    r = httpx.get(d.url + "/api/telemetry", headers=d.headers, params=params, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_for_snapshot(d: Daemon, min_history: int = 1, after: float = 0.0) -> dict[str, Any]:
    """The telemetry once it has ``min_history`` samples and its newest was taken after ``after``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = telemetry(d)
        snap = body["snapshot"]
        if snap is not None and len(body["history"]) >= min_history and snap["at"] > after:
            return body
        time.sleep(0.2)
    raise AssertionError(f"no telemetry after 20 s: {body}\n{d.log()}")


def tegrastats_children(d: Daemon) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(d.proc.pid).children(recursive=True):
        try:
            if "tegrastats" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_the_probe_picks_tegrastats_and_the_snapshot_carries_the_fixture(board: Daemon) -> None:
    # a sample taken now, after the fixture's chat request has finished
    body = wait_for_snapshot(board, min_history=3, after=time.time())
    bin_dir = board.log_path.parent / "bin"
    assert body["source"] == "tegrastats"
    assert body["reason"].startswith(f"tegrastats: running {bin_dir / 'tegrastats'} --interval 500")
    assert "jtop" in body["reason"]  # why jtop was passed over
    assert (bin_dir / "args.txt").read_text() == "--interval 500"
    assert body["interval_s"] == 0.5 and body["capacity"] == 1800
    assert "telemetry from tegrastats" in board.log()

    snap = body["snapshot"]
    assert snap["source"] == "tegrastats" and snap["stale"] is False
    assert snap["temps"]["tj"] in TJ and snap["temps"]["cpu"] in (94.812, 95.031)
    assert snap["power"]["total_mw"] in POWER and snap["power"]["total_from"] == "VDD_IN"
    assert snap["memory"]["ram_total_mb"] == 15388 and snap["memory"]["swap_total_mb"] == 7694
    assert snap["gpu"]["load_pct"] == 99 and snap["gpu"]["freq_mhz"] in ([918], [612])
    assert [c["online"] for c in snap["cpu"]["cores"]] == [True] * 6 + [False, False]
    assert snap["emc"]["freq_mhz"] == 3199
    # tj 96 C: above the default soft limit (85), under the hard one (99)
    assert snap["thermal"]["state"] == "soft" and snap["thermal"]["sensor"] == "tj"
    assert snap["thermal"]["reason"].startswith("tj 96.")
    assert any(w["kind"] == "thermal" for w in snap["warnings"])

    daemon = snap["daemon"]
    assert daemon["model"] == "smollm2-135m" and daemon["state"] == "ready"
    assert daemon["queue"] == 0 and daemon["plan"]["fits"] is True
    assert daemon["swaps"] == 1 and daemon["recent_swaps"][0]["to"] == "smollm2-135m"
    assert daemon["memory_reserve_mb"] > 0

    history = body["history"]
    assert {h["temps"]["tj"] for h in history} <= TJ and {h["power_mw"] for h in history} <= POWER
    assert all(b["t"] >= a["t"] for a, b in itertools.pairwise(history))
    assert [h["seq"] for h in history] == sorted(h["seq"] for h in history)

    (child,) = tegrastats_children(board)
    assert child.cmdline()[-2:] == ["--interval", "500"]


def test_the_sse_stream_carries_the_fixture_values(board: Daemon) -> None:
    wait_for_snapshot(board)
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", board.url + "/api/telemetry/stream", headers=board.headers, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if len(events) >= 8 or (len(events) >= 3 and len({e["temps"]["tj"] for e in events}) == 2):
                break
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert {e["temps"]["tj"] for e in events} == TJ  # both fixture lines came through
    assert {e["power"]["total_mw"] for e in events} <= POWER
    offline = [e for e in events if e["temps"]["tj"] == 96.75]
    assert offline and all(e["temps"]["soc1"] is None for e in offline)  # -256C on that line
    assert all(e["daemon"]["model"] == "smollm2-135m" for e in events)


def test_the_stream_needs_the_key(board: Daemon) -> None:
    r = httpx.get(board.url + "/api/telemetry/stream", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(board.url + "/dashboard", timeout=10).status_code == 401
    assert httpx.get(board.url + "/dashboard", auth=("owner", KEY), timeout=10).status_code == 200


def test_a_request_shows_in_the_daemon_figures(board: Daemon) -> None:
    # the board fixture served one chat request before the tests
    daemon = telemetry(board)["snapshot"]["daemon"]
    assert daemon["requests"] == 1 and daemon["tokens_per_s"] and daemon["tokens_per_s"] > 0
    (recent,) = daemon["recent_requests"]
    assert recent["path"] == "/v1/chat/completions" and recent["status"] == 200
    assert recent["served_by"] == "local:smollm2-135m" and recent["route"] == "zoe-chat (alias of smollm2-135m)"
    assert recent["fallback"] is None and daemon["fallbacks"] == 0


def wait_for_state(d: Daemon, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        snap = telemetry(d)["snapshot"]
        if snap and snap["thermal"]["state"] == state:
            return dict(snap)
        time.sleep(0.2)
    raise AssertionError(f"thermal state never became {state}: {snap['thermal'] if snap else None}")


def test_the_board_heats_and_cools_then_tegrastats_stops_with_the_daemon(tmp_path: Path, smollm_path: Path) -> None:
    # a daemon of its own (the board is shared): no preload, an Orin Nano at 58 C
    bin_dir = tmp_path / "bin"
    fake_tegrastats(bin_dir, NANO)
    registry = write_registry(tmp_path, {"smollm2-135m": smollm_entry(smollm_path)})
    d = start_daemon(
        registry,
        tmp_path,
        "--no-preload",
        "--telemetry-interval",
        "0.5",
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
        wait_ready=False,
    )
    try:
        snap = wait_for_snapshot(d)["snapshot"]
        assert snap["source"] == "tegrastats" and snap["temps"]["tj"] in (58.312, 58.906, 57.75)
        assert snap["thermal"]["state"] == "normal"
        # 908 MB free of 7620 with 369 MB swapped: memory pressure (under the registry's reserve), not heat
        assert [w["kind"] for w in snap["warnings"]] == ["memory", "swap"]
        assert "908 MB available, under the" in snap["warnings"][0]["message"]
        assert snap["daemon"]["model"] is None and snap["daemon"]["plan"] is None
        # the fake board heats up past the soft limit, then cools down again
        (bin_dir / "lines.txt").write_text(THROTTLED.read_text())
        hot = wait_for_state(d, "soft")
        assert hot["temps"]["tj"] in TJ and hot["thermal"]["reason"].startswith("tj 96.")
        (bin_dir / "lines.txt").write_text(NANO.read_text())
        cool = wait_for_state(d, "normal")
        assert cool["temps"]["tj"] < 80 and "under the soft limit" in cool["thermal"]["reason"]
        (child,) = tegrastats_children(d)
    finally:
        d.stop()
    assert d.proc.returncode == 0
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_metrics_carry_the_boards_gauges(board: Daemon) -> None:
    wait_for_snapshot(board)
    r = httpx.get(board.url + "/metrics", headers=board.headers, timeout=10)
    assert r.status_code == 200, r.text
    gauges = dict(line.rsplit(" ", 1) for line in r.text.splitlines() if line.startswith("zoe_") and " " in line)
    assert float(gauges['zoe_temperature_celsius{sensor="tj"}']) in TJ  # the fixture's junction temperature
    assert round(float(gauges["zoe_power_watts"]) * 1000) in POWER
    # the throttled fixture is above the soft limit, as /api/telemetry says too
    assert float(gauges['zoe_thermal_state{state="soft"}']) == 1.0
    assert 0 < float(gauges["zoe_ram_used_bytes"]) < float(gauges["zoe_ram_total_bytes"])
