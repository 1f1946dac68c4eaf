"""Every fixture line parses, with its values asserted, and each board's quirk handled."""

from __future__ import annotations

import pytest

from tests.telemetry.helpers import AGX, FIXTURES, NANO, THROTTLED, XAVIER, lines
from zoe_edge.telemetry.tegrastats import Core, Engine, Rail, TegrastatsError, parse_line


def test_every_fixture_line_parses_with_memory_temps_and_power() -> None:
    files = sorted(FIXTURES.glob("*.txt"))
    assert len(files) == 4
    for path in files:
        for line in lines(path):
            r = parse_line(line)
            assert r.ram_total_mb and r.ram_used_mb and 0 < r.ram_used_mb < r.ram_total_mb, line
            assert r.swap_total_mb is not None and r.cpu and r.temps and r.rails, line
            assert r.power_total_mw is not None and r.power_total_mw > 0, line
            assert r.stamp is not None and r.stamp.startswith("11-2"), line


def test_orin_nano_busy_then_idle_with_an_off_core_and_vdd_in() -> None:
    first, second, third = (parse_line(line) for line in lines(NANO))
    assert (first.ram_used_mb, first.ram_total_mb, first.ram_available_mb) == (6712, 7620, 908)
    assert (first.lfb_blocks, first.lfb_block_mb) == (12, 4)
    assert (first.swap_used_mb, first.swap_total_mb, first.swap_cached_mb) == (369, 3810, 8)
    assert first.cpu[0] == Core(online=True, load_pct=38, freq_mhz=1497)
    assert [c.online for c in first.cpu] == [True] * 6
    assert (first.emc_load_pct, first.emc_freq_mhz) == (61, 2133)
    assert (first.gpu_load_pct, first.gpu_freq_mhz) == (99, [612])
    assert first.engines["NVDEC"] == Engine(online=False)
    assert first.engines["APE"] == Engine(online=True, freq_mhz=200)
    assert first.temps == {
        "cpu": 57.125,
        "soc2": 55.093,
        "soc0": 56.625,
        "gpu": 58.625,
        "tj": 58.312,
        "soc1": 55.937,
    }
    assert first.rails["VDD_IN"] == Rail(inst_mw=16321, avg_mw=11204)
    assert first.rails["VDD_CPU_GPU_CV"] == Rail(inst_mw=7104, avg_mw=4944)
    # VDD_IN measures the whole module: it is the total, not added to the other rails
    assert (first.power_total_mw, first.power_total_avg_mw, first.total_source) == (16321, 11204, "VDD_IN")
    assert second.temps["tj"] == 58.906 and second.gpu_load_pct == 98 and second.ram_used_mb == 6720
    # idle: the GPU clock drops, the last core is switched off
    assert (third.gpu_load_pct, third.gpu_freq_mhz) == (0, [306])
    assert third.cpu[-1] == Core(online=False) and third.cpu[0].load_pct == 12
    assert third.power_total_mw == 6120 and third.emc_load_pct == 20
    assert third.cpu_load_pct == pytest.approx((12 + 1 + 0 + 0 + 0) / 5, abs=0.05)


def test_agx_orin_two_gpu_clusters_no_vdd_in_and_a_missing_gpu_sensor() -> None:
    first, second = (parse_line(line) for line in lines(AGX))
    assert (first.ram_used_mb, first.ram_total_mb) == (18207, 62841)
    assert (first.swap_used_mb, first.swap_total_mb) == (86, 31420)
    assert len(first.cpu) == 12 and first.cpu[0] == Core(online=True, load_pct=14, freq_mhz=2188)
    assert (first.gpu_load_pct, first.gpu_freq_mhz) == (0, [0, 0])
    assert (second.gpu_load_pct, second.gpu_freq_mhz) == (87, [1300, 1300])
    assert (second.emc_load_pct, second.emc_freq_mhz) == (17, 3199)
    assert first.engines["NVENC"] == Engine(online=True, load_pct=79, freq_mhz=166)
    assert first.engines["VIC"] == Engine(online=True, load_pct=36, freq_mhz=115)
    assert first.engines["PVA0"] == Engine(online=False) and first.engines["NVDLA1"] == Engine(online=False)
    assert "gpu" not in first.temps and first.temps["tj"] == 52.562
    assert second.temps["gpu"] == 55.937 and second.temps["tj"] == 55.937
    assert "VDD_IN" not in first.rails and set(first.rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"}
    # without VDD_IN the total is the sum of the rails
    assert first.power_total_mw == 2412 + 1607 + 4707 and first.total_source == "sum of rails"
    assert second.power_total_mw == 9873 + 2210 + 5120
    assert second.power_total_avg_mw == 6142 + 1908 + 4913


def test_xavier_nx_older_format() -> None:
    (r,) = (parse_line(line) for line in lines(XAVIER))
    assert (r.ram_used_mb, r.ram_total_mb, r.lfb_blocks) == (3541, 7765, 112)
    assert [c.online for c in r.cpu] == [True, True, False, False, True, True]
    assert r.cpu[4] == Core(online=True, load_pct=3, freq_mhz=1190)
    # EMC_FREQ without a clock
    assert (r.emc_load_pct, r.emc_freq_mhz) == (0, None)
    assert (r.gpu_load_pct, r.gpu_freq_mhz) == (0, [114])
    assert r.engines["MTS_FG"] == Engine(online=True, load_pct=0) and r.engines["MTS_BG"].load_pct == 0
    # capitalised sensor names come out lower-cased, like the Orin ones
    assert r.temps == {"aux": 45.0, "cpu": 46.5, "thermal": 45.6, "ao": 45.0, "gpu": 45.5, "pmic": 50.0}
    assert r.power_total_mw == 2763 and r.rails["VDD_SOC"] == Rail(inst_mw=650, avg_mw=711)


def test_orin_nx_throttled_with_an_offline_sensor() -> None:
    hot, hotter = (parse_line(line) for line in lines(THROTTLED))
    assert hot.temps["tj"] == 96.125 and hot.temps["soc1"] == 91.906
    assert hotter.temps["tj"] == 96.75 and hotter.temps["cpu"] == 95.031
    # -256C means the sensor is offline: kept as a key, with no value
    assert "soc1" in hotter.temps and hotter.temps["soc1"] is None
    assert (hot.gpu_freq_mhz, hotter.gpu_freq_mhz) == ([918], [612])
    assert [c.online for c in hot.cpu] == [True] * 6 + [False, False]
    assert hot.cpu[0] == Core(online=True, load_pct=96, freq_mhz=1984)
    assert hotter.cpu[0].freq_mhz == 1497
    assert (hot.power_total_mw, hotter.power_total_mw) == (24890, 21040)
    assert (hot.ram_used_mb, hot.ram_total_mb, hot.swap_used_mb) == (12874, 15388, 0)


def test_older_gr3d_form_and_unitless_rails() -> None:
    # JetPack 4 (TX2/Nano): GR3D_FREQ pct%@MHz without brackets, rails without "mW"
    line = (
        "RAM 2044/3964MB (lfb 65x4MB) SWAP 0/1982MB (cached 0MB) CPU [9%@1479,3%@1479,off,off] "
        "EMC_FREQ 4%@1600 GR3D_FREQ 12%@921 APE 25 PLL@33C CPU@35.5C PMIC@100C GPU@33.5C AO@41C "
        "thermal@34.25C POM_5V_IN 2304/2304 POM_5V_GPU 40/40 POM_5V_CPU 366/366"
    )
    r = parse_line(line, at=123.0)
    assert r.at == 123.0 and r.stamp is None
    assert (r.gpu_load_pct, r.gpu_freq_mhz) == (12, [921])
    assert r.rails["POM_5V_GPU"] == Rail(inst_mw=40, avg_mw=40)
    assert r.power_total_mw == 2304 and r.total_source == "POM_5V_IN"
    assert r.temps["thermal"] == 34.25 and r.cpu[2] == Core(online=False)


def test_reading_as_dict_is_the_api_shape() -> None:
    d = parse_line(lines(THROTTLED)[1]).as_dict()
    assert d["temps"]["soc1"] is None and d["temps"]["tj"] == 96.75
    assert d["power"] == {
        "total_mw": 21040.0,
        "total_avg_mw": 22010.0,
        "total_from": "VDD_IN",
        "rails": {
            "VDD_IN": {"inst_mw": 21040.0, "avg_mw": 22010.0},
            "VDD_CPU_GPU_CV": {"inst_mw": 10980.0, "avg_mw": 11390.0},
            "VDD_SOC": {"inst_mw": 4390.0, "avg_mw": 4290.0},
        },
    }
    assert d["gpu"] == {"load_pct": 99.0, "freq_mhz": [612]}
    assert d["cpu"]["cores"][6] == {"online": False, "load_pct": None, "freq_mhz": None}
    assert d["memory"]["ram_available_mb"] == 15388 - 12870


@pytest.mark.parametrize("line", ["", "hello world", "CPU [1%@100] tj@50C VDD_IN 1mW/1mW"])
def test_a_line_without_ram_is_rejected(line: str) -> None:
    with pytest.raises(TegrastatsError):
        parse_line(line)
