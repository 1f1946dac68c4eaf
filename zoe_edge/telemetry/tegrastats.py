"""Parse one ``tegrastats`` line into a :class:`Reading`.

tegrastats prints one line per interval; the fields differ between boards and JetPack releases,
so the parser walks the tokens and takes what it recognises rather than matching one layout:

- ``RAM used/totalMB (lfb NxSMB)``, ``SWAP used/totalMB (cached NMB)``
- ``CPU [pct%@MHz,...,off]``: one entry per core, ``off`` for an offline core
- ``EMC_FREQ pct%@MHz`` (Xavier on JetPack 5 prints ``EMC_FREQ 0%`` without a clock)
- ``GR3D_FREQ pct%@[MHz]``, ``pct%@[a,b]`` (two GPU clusters on AGX Orin) or the older ``pct%@MHz``
- engines: ``NVENC 79%@166``, ``NVDEC off``, ``APE 174`` (clock only), ``MTS fg 0% bg 0%``
- sensors ``name@tempC`` (``-256C`` = offline; Xavier capitalises names: they are lower-cased here)
- power rails ``NAME instmW/avgmW`` (JetPack 4 prints ``NAME inst/avg`` without units)
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

OFFLINE_C = -256.0
# the rail that measures the whole module's input, when the board has one
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")

_STAMP = re.compile(r"^\d\d-\d\d-\d{4}$")
_CLOCK = re.compile(r"^\d\d:\d\d:\d\d$")
_USED_TOTAL = re.compile(r"^(\d+)/(\d+)([kKMG]B)$")
_LFB = re.compile(r"^\(?(\d+)x(\d+)([kKMG]B)\)?$")
_SIZE = re.compile(r"^\(?(\d+)([kKMG]B)\)?$")
_LOAD_FREQ = re.compile(r"^(\d+(?:\.\d+)?)%(?:@\[?([\d,]*)\]?)?$")
_SENSOR = re.compile(r"^([A-Za-z][\w.-]*)@(-?\d+(?:\.\d+)?)C$")
_RAIL_VALUE = re.compile(r"^(\d+)(?:mW)?/(\d+)(?:mW)?$")
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_NUMBER = re.compile(r"^\d+$")


class TegrastatsError(ValueError):
    """The line is not a tegrastats line (no RAM field)."""


@dataclass
class Core:
    online: bool
    load_pct: float | None = None
    freq_mhz: int | None = None


@dataclass
class Engine:
    online: bool
    load_pct: float | None = None
    freq_mhz: int | None = None


@dataclass
class Rail:
    inst_mw: float
    avg_mw: float


@dataclass
class Reading:
    """One sample of the board, whatever the source (tegrastats, jtop, psutil)."""

    source: str
    at: float = field(default_factory=time.time)
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    ram_available_mb: float | None = None
    lfb_blocks: int | None = None
    lfb_block_mb: float | None = None
    swap_used_mb: float | None = None
    swap_total_mb: float | None = None
    swap_cached_mb: float | None = None
    cpu: list[Core] = field(default_factory=list)
    emc_load_pct: float | None = None
    emc_freq_mhz: int | None = None
    gpu_load_pct: float | None = None
    # one clock per GPU cluster (two on AGX Orin)
    gpu_freq_mhz: list[int] = field(default_factory=list)
    engines: dict[str, Engine] = field(default_factory=dict)
    # lower-cased sensor name -> degrees C, None when the sensor is offline (-256C)
    temps: dict[str, float | None] = field(default_factory=dict)
    rails: dict[str, Rail] = field(default_factory=dict)
    # how the total was found: "VDD_IN" (a rail measuring the module's input) or "sum" of the rails
    power_total_from: str | None = None
    stamp: str | None = None

    @property
    def power_total_mw(self) -> float | None:
        return self._total("inst_mw")

    @property
    def power_total_avg_mw(self) -> float | None:
        return self._total("avg_mw")

    def _total(self, which: str) -> float | None:
        if not self.rails:
            return None
        for name in TOTAL_RAILS:
            if name in self.rails:
                return float(getattr(self.rails[name], which))
        return float(sum(getattr(r, which) for r in self.rails.values()))

    @property
    def total_source(self) -> str | None:
        if not self.rails:
            return None
        return next((name for name in TOTAL_RAILS if name in self.rails), "sum of rails")

    @property
    def cpu_load_pct(self) -> float | None:
        """Mean load over the online cores."""
        loads = [c.load_pct for c in self.cpu if c.online and c.load_pct is not None]
        return round(sum(loads) / len(loads), 1) if loads else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape served by ``/api/telemetry``."""
        return {
            "at": self.at,
            "source": self.source,
            "stamp": self.stamp,
            "temps": dict(self.temps),
            "power": {
                "total_mw": self.power_total_mw,
                "total_avg_mw": self.power_total_avg_mw,
                "total_from": self.total_source,
                "rails": {name: asdict(rail) for name, rail in self.rails.items()},
            },
            "memory": {
                "ram_used_mb": self.ram_used_mb,
                "ram_total_mb": self.ram_total_mb,
                "ram_available_mb": self.ram_available_mb,
                "lfb_blocks": self.lfb_blocks,
                "lfb_block_mb": self.lfb_block_mb,
                "swap_used_mb": self.swap_used_mb,
                "swap_total_mb": self.swap_total_mb,
                "swap_cached_mb": self.swap_cached_mb,
            },
            "gpu": {"load_pct": self.gpu_load_pct, "freq_mhz": list(self.gpu_freq_mhz)},
            "emc": {"load_pct": self.emc_load_pct, "freq_mhz": self.emc_freq_mhz},
            "cpu": {"load_pct": self.cpu_load_pct, "cores": [asdict(core) for core in self.cpu]},
            "engines": {name: asdict(engine) for name, engine in self.engines.items()},
        }


def _mb(value: str, unit: str) -> float:
    scale = {"kB": 1 / 1024, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[unit]
    return round(int(value) * scale, 3)


def _core(entry: str) -> Core:
    entry = entry.strip()
    if entry == "off" or not entry:
        return Core(online=False)
    m = _LOAD_FREQ.match(entry)
    if m is None:
        return Core(online=False)
    freq = m.group(2)
    return Core(online=True, load_pct=float(m.group(1)), freq_mhz=int(freq) if freq else None)


def _load_freq(token: str) -> tuple[float, list[int]] | None:
    m = _LOAD_FREQ.match(token)
    if m is None:
        return None
    freqs = [int(f) for f in (m.group(2) or "").split(",") if f]
    return float(m.group(1)), freqs


def parse_line(line: str, at: float | None = None) -> Reading:
    """Parse one tegrastats line; unknown fields are skipped. Raises :class:`TegrastatsError`."""
    tokens = line.split()
    r = Reading(source="tegrastats", at=time.time() if at is None else at)
    i = 0
    if len(tokens) >= 2 and _STAMP.match(tokens[0]) and _CLOCK.match(tokens[1]):
        r.stamp = f"{tokens[0]} {tokens[1]}"
        i = 2
    seen_ram = False
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in ("RAM", "SWAP", "IRAM") and (m := _USED_TOTAL.match(nxt)):
            used, total = _mb(m.group(1), m.group(3)), _mb(m.group(2), m.group(3))
            i += 2
            after = tokens[i + 1] if i + 1 < len(tokens) else ""
            if tok == "RAM":
                r.ram_used_mb, r.ram_total_mb, seen_ram = used, total, True
                if tokens[i : i + 1] == ["(lfb"] and (lfb := _LFB.match(after)):
                    r.lfb_blocks, r.lfb_block_mb = int(lfb.group(1)), _mb(lfb.group(2), lfb.group(3))
                    i += 2
            elif tok == "SWAP":
                r.swap_used_mb, r.swap_total_mb = used, total
                if tokens[i : i + 1] == ["(cached"] and (cached := _SIZE.match(after)):
                    r.swap_cached_mb = _mb(cached.group(1), cached.group(2))
                    i += 2
            continue
        if tok == "CPU" and nxt.startswith("[") and nxt.endswith("]"):
            r.cpu = [_core(entry) for entry in nxt[1:-1].split(",")]
            i += 2
            continue
        if tok == "EMC_FREQ" and (lf := _load_freq(nxt)):
            r.emc_load_pct = lf[0]
            r.emc_freq_mhz = lf[1][0] if lf[1] else None
            i += 2
            continue
        if tok == "GR3D_FREQ" and (lf := _load_freq(nxt)):
            r.gpu_load_pct, r.gpu_freq_mhz = lf
            i += 2
            continue
        if tok == "MTS" and tokens[i + 1 : i + 5 : 2] == ["fg", "bg"]:
            for label, value in ((tokens[i + 1], tokens[i + 2]), (tokens[i + 3], tokens[i + 4])):
                load = _load_freq(value)
                r.engines[f"MTS_{label.upper()}"] = Engine(online=True, load_pct=load[0] if load else None)
            i += 5
            continue
        if sensor := _SENSOR.match(tok):
            temp = float(sensor.group(2))
            r.temps[sensor.group(1).lower()] = None if temp <= OFFLINE_C else temp
            i += 1
            continue
        if _NAME.match(tok):
            if rail := _RAIL_VALUE.match(nxt):
                r.rails[tok] = Rail(inst_mw=float(rail.group(1)), avg_mw=float(rail.group(2)))
                i += 2
                continue
            name = tok.removesuffix("_FREQ")
            if nxt == "off":
                r.engines[name] = Engine(online=False)
                i += 2
                continue
            if lf := _load_freq(nxt):
                r.engines[name] = Engine(online=True, load_pct=lf[0], freq_mhz=lf[1][0] if lf[1] else None)
                i += 2
                continue
            if _NUMBER.match(nxt):
                r.engines[name] = Engine(online=True, freq_mhz=int(nxt))
                i += 2
                continue
        i += 1
    if not seen_ram:
        raise TegrastatsError(f"not a tegrastats line (no RAM field): {line[:80]!r}")
    if r.ram_used_mb is not None and r.ram_total_mb is not None:
        r.ram_available_mb = round(r.ram_total_mb - r.ram_used_mb, 3)
    return r
