"""The source chain jtop -> tegrastats -> psutil: which one is picked, why, and what each reads."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.telemetry.helpers import NANO, THROTTLED, fake_tegrastats
from zoe_edge.telemetry.probe import (
    JtopFactory,
    JtopSource,
    PsutilSource,
    TegrastatsSource,
    check_jtop,
    choose_source,
    read_thermal_zones,
    reading_from_jtop,
    sensor_name,
    socket_answers,
)


def no_jtop() -> tuple[JtopFactory | None, str]:
    return None, "jtop is not installed (ModuleNotFoundError)"


def nowhere(name: str) -> str | None:
    return None


class FakeJtop:
    """What ``jtop.jtop()`` gives: start/close and the stats dictionaries (jetson-stats 4.x shapes)."""

    def __init__(self) -> None:
        self.started = self.closed = False
        self.temperature = {
            "cpu": {"online": True, "temp": 51.5},
            "tj": {"online": True, "temp": 53.25},
            "soc1": {"online": False, "temp": -256.0},
        }
        self.power = {
            "rail": {"VDD_GPU_SOC": {"power": 2412, "avg": 2300}, "VDD_CPU_CV": {"power": 1607, "avg": 1500}},
            "tot": {"power": 9100, "avg": 8800},
        }
        self.memory = {"RAM": {"tot": 7620 * 1024, "used": 5000 * 1024}, "SWAP": {"tot": 3810 * 1024, "used": 0}}
        self.cpu = {
            "cpu": [
                {"online": True, "user": 30.0, "system": 8.0, "nice": 0.0, "freq": {"cur": 1497600}},
                {"online": False},
            ]
        }
        self.gpu = {"gpu": {"status": {"load": 87.5}, "freq": {"cur": 612000000 // 1000, "GPC": [612000]}}}

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True


async def test_jtop_is_chosen_when_it_imports_and_answers() -> None:
    handle = FakeJtop()
    source = await choose_source(
        1.0, jtop=lambda: (lambda: handle, "jtop service answers on /run/jtop.sock"), which=nowhere
    )
    try:
        assert isinstance(source, JtopSource) and handle.started
        assert source.reason.startswith("jtop:")
        r = await source.read()
        assert r is not None and r.source == "jtop"
        assert r.temps == {"cpu": 51.5, "tj": 53.25, "soc1": None}
        # jtop's own total stands as VDD_IN: the total is the module input, not a sum of rails
        assert r.power_total_mw == 9100 and r.power_total_avg_mw == 8800
        assert r.rails["VDD_GPU_SOC"].inst_mw == 2412
        assert (r.ram_total_mb, r.ram_used_mb, r.ram_available_mb) == (7620, 5000, 2620)
        assert r.cpu[0].online and r.cpu[0].load_pct == 38.0 and r.cpu[0].freq_mhz == 1497
        assert not r.cpu[1].online
        assert (r.gpu_load_pct, r.gpu_freq_mhz) == (87.5, [612])
    finally:
        await source.close()
    assert handle.closed


async def test_a_jtop_that_fails_to_start_falls_through(tmp_path: Path) -> None:
    def broken() -> Any:
        raise ConnectionRefusedError("jtop.service is not running")

    source = await choose_source(1.0, jtop=lambda: (broken, "answers"), which=nowhere)
    try:
        assert isinstance(source, PsutilSource)
        assert "jtop failed to start: jtop.service is not running" in source.reason
        assert "no tegrastats on PATH" in source.reason
    finally:
        await source.close()


def test_jtop_check_here_reports_why_not(tmp_path: Path) -> None:
    factory, why = check_jtop(str(tmp_path / "jtop.sock"))
    assert factory is None
    # jetson-stats is not installed on this machine; on a board without the service the socket fails
    assert "jtop is not installed" in why or "does not answer" in why


def test_socket_answers_only_when_someone_listens(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    assert not socket_answers(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        assert socket_answers(path)


async def test_tegrastats_is_spawned_and_parsed(tmp_path: Path) -> None:
    exe = fake_tegrastats(tmp_path / "bin", NANO)
    source = await choose_source(0.2, jtop=no_jtop, which=lambda name: str(exe) if name == "tegrastats" else None)
    try:
        assert isinstance(source, TegrastatsSource)
        assert source.reason.startswith(f"tegrastats: running {exe} --interval 200")
        assert "jtop is not installed" in source.reason
        assert (tmp_path / "bin" / "args.txt").read_text() == "--interval 200"
        seen: set[float] = set()
        for _ in range(30):
            r = await source.read()
            assert r is not None and r.source == "tegrastats"
            seen.add(r.temps["tj"] or 0.0)
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.1)
        assert seen <= {58.312, 58.906, 57.75} and len(seen) >= 2
        pid = source.pid
        assert pid is not None and psutil.pid_exists(pid)
    finally:
        await source.close()
    # the child is gone with the source
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_tegrastats_that_exits_falls_back_to_psutil(tmp_path: Path) -> None:
    exe = fake_tegrastats(tmp_path / "bin", THROTTLED, exit_code=3)
    source = await choose_source(1.0, jtop=no_jtop, which=lambda name: str(exe))
    try:
        assert isinstance(source, PsutilSource)
        assert f"tegrastats failed: {exe} exited with 3 before a parsable line" in source.reason
        assert source.reason.startswith("psutil:")
    finally:
        await source.close()


async def test_stale_tegrastats_reports_nothing(tmp_path: Path) -> None:
    exe = fake_tegrastats(tmp_path / "bin", THROTTLED)
    source = TegrastatsSource(str(exe), 0.2)
    await source.start()
    try:
        r = await source.read()
        assert r is not None and r.temps["tj"] in (96.125, 96.75)
        r.at -= 60  # pretend the newest line is a minute old
        assert await source.read() is None
    finally:
        await source.close()


def fake_board(root: Path) -> Path:
    """A /sys and /proc tree shaped like an Orin's, for the psutil source."""
    zones = {"cpu-thermal": "57125", "gpu-thermal": "58625", "tj-thermal": "58312", "soc1-thermal": "-256000"}
    for i, (kind, temp) in enumerate(zones.items()):
        zone = root / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    broken = root / "sys/class/thermal/thermal_zone9"
    broken.mkdir()
    (broken / "type").write_text("CV0-therm\n")  # no temp file: an offline zone
    hwmon = root / "sys/class/hwmon/hwmon1"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("ina3221\n")
    for n, label, mv, ma in ((1, "VDD_IN", 5000, 3264), (2, "VDD_CPU_GPU_CV", 5000, 1420), (4, "sum of shunts", 1, 1)):
        (hwmon / f"in{n}_label").write_text(label + "\n")
        (hwmon / f"in{n}_input").write_text(f"{mv}\n")
        (hwmon / f"curr{n}_input").write_text(f"{ma}\n")
    gpu = root / "sys/devices/platform/gpu.0"
    (gpu / "devfreq/17000000.gpu").mkdir(parents=True)
    (gpu / "load").write_text("734\n")
    (gpu / "devfreq/17000000.gpu/cur_freq").write_text("612000000\n")
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text(
        "MemTotal:        7802880 kB\nMemFree:          500000 kB\nMemAvailable:    1048576 kB\n"
        "SwapCached:         8192 kB\nSwapTotal:       3901440 kB\nSwapFree:        3523584 kB\n"
    )
    return root


async def test_psutil_source_reads_sys_and_proc(tmp_path: Path) -> None:
    root = fake_board(tmp_path / "root")
    source = await choose_source(1.0, jtop=no_jtop, which=nowhere, root=root)
    try:
        assert isinstance(source, PsutilSource)
        assert source.reason == (
            "psutil: /proc/meminfo, /sys/class/thermal and psutil "
            "(jtop is not installed (ModuleNotFoundError); no tegrastats on PATH)"
        )
        r = await source.read()
        assert r is not None
        assert r.temps == {"cpu": 57.125, "gpu": 58.625, "tj": 58.312, "soc1": None, "cv0": None}
        assert (r.ram_total_mb, r.ram_available_mb, r.ram_used_mb) == (7620, 1024, 6596)
        assert (r.swap_total_mb, r.swap_used_mb, r.swap_cached_mb) == (3810, 369, 8)
        assert r.rails["VDD_IN"].inst_mw == 16320 and r.power_total_mw == 16320
        assert "sum of shunts" not in r.rails
        assert (r.gpu_load_pct, r.gpu_freq_mhz) == (73.4, [612])
        assert len(r.cpu) == psutil.cpu_count() and all(c.online for c in r.cpu)
    finally:
        await source.close()


async def test_psutil_source_on_this_machine() -> None:
    source = PsutilSource()
    await source.start()
    r = await source.read()
    assert r is not None and r.ram_total_mb and r.ram_total_mb > 100
    assert r.ram_used_mb is not None and 0 < r.ram_used_mb < r.ram_total_mb


def test_sensor_names_match_tegrastats() -> None:
    assert [sensor_name(n) for n in ("tj-thermal", "CPU-therm", "PMIC-Die", "acpitz", "thermal")] == [
        "tj",
        "cpu",
        "pmic-die",
        "acpitz",
        "thermal",
    ]


def test_duplicate_zone_names_stay_apart(tmp_path: Path) -> None:
    for i in range(2):
        zone = tmp_path / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text("acpitz")
        (zone / "temp").write_text(str(40000 + i * 1000))
    assert read_thermal_zones(tmp_path) == {"acpitz": 40.0, "acpitz1": 41.0}


@pytest.mark.parametrize("temp", [-256.0, None])
def test_jtop_offline_sensor(temp: float | None) -> None:
    r = reading_from_jtop({"tj": {"online": True, "temp": temp}}, {}, {})
    assert r.temps == {"tj": None} and r.power_total_mw is None and r.ram_total_mb is None


def tegrastats_children() -> list[psutil.Process]:
    """tegrastats processes this test process started (not those of a daemon another test runs)."""
    out = []
    for child in psutil.Process().children():
        try:
            if "tegrastats" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


async def test_a_silent_tegrastats_times_out_and_cancelling_the_probe_leaves_no_process(tmp_path: Path) -> None:
    exe = fake_tegrastats(tmp_path / "bin", NANO)
    (tmp_path / "bin" / "lines.txt").write_text("")  # runs, prints nothing
    silent = TegrastatsSource(str(exe), 0.1, first_line_timeout=0.5)
    with pytest.raises(RuntimeError, match=r"printed nothing in 0\.5 s before a parsable line"):
        await silent.start()
    assert tegrastats_children() == []
    # the daemon stops while the probe still waits for tegrastats' first line
    task = asyncio.create_task(choose_source(1.0, jtop=no_jtop, which=lambda name: str(exe)))
    for _ in range(50):
        if tegrastats_children():
            break
        await asyncio.sleep(0.05)
    assert len(tegrastats_children()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tegrastats_children() == []


async def test_a_jtop_that_hangs_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import zoe_edge.telemetry.probe as probe

    monkeypatch.setattr(probe, "JTOP_START_TIMEOUT_S", 0.2)
    handle = FakeJtop()
    handle.start = lambda: time.sleep(1)  # type: ignore[method-assign]
    source = await choose_source(1.0, jtop=lambda: (lambda: handle, "answers"), which=nowhere)
    try:
        assert isinstance(source, PsutilSource)
        assert "jtop failed to start: TimeoutError" in source.reason
        assert handle.closed
    finally:
        await source.close()
