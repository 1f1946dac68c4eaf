"""Where board figures come from: jtop, else ``tegrastats``, else psutil + /sys + /proc on any Linux.

:func:`choose_source` walks that chain once at start-up and returns a started :class:`Source`
whose ``reason`` says which one answered and why the ones before it did not. Each source hands
back a :class:`~zoe_edge.telemetry.tegrastats.Reading` on :meth:`Source.read`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from zoe_edge.telemetry.tegrastats import OFFLINE_C, Core, Rail, Reading, TegrastatsError, parse_line

log = logging.getLogger("zoe_edge.telemetry")

JTOP_SOCKET = "/run/jtop.sock"
JTOP_START_TIMEOUT_S = 10.0
JtopFactory = Callable[[], Any]
# what the jtop check found: a factory that opens a jtop client, or None, and why
JtopCheck = Callable[[], tuple[JtopFactory | None, str]]


class Source:
    """One provider of readings. ``reason`` explains why it was chosen."""

    name = "none"

    def __init__(self) -> None:
        self.reason = ""

    async def start(self) -> None:
        """Get ready to read; raises ``OSError``/``RuntimeError`` when this source cannot work here."""

    async def read(self) -> Reading | None:
        """The newest reading, or ``None`` when there is no fresh one."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop any process or thread the source started."""


# --- jtop ------------------------------------------------------------------------------------


def check_jtop(socket_path: str = JTOP_SOCKET, timeout: float = 0.5) -> tuple[JtopFactory | None, str]:
    """jtop is usable when the package imports and its service socket accepts a connection."""
    try:
        module = importlib.import_module("jtop")
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return None, f"jtop is not installed ({type(exc).__name__})"
    if not socket_answers(socket_path, timeout):
        return None, f"jtop imports but its service socket {socket_path} does not answer (is jtop.service running?)"
    return module.jtop, f"jtop service answers on {socket_path}"


def socket_answers(path: str, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def reading_from_jtop(
    temperature: dict[str, Any],
    power: dict[str, Any],
    memory: dict[str, Any],
    cpu: dict[str, Any] | None = None,
    gpu: dict[str, Any] | None = None,
) -> Reading:
    """Convert jtop's dictionaries (jetson-stats 4.x shapes) into a :class:`Reading`.

    ``temperature`` ``{name: {online, temp}}``; ``power`` ``{"rail": {name: {power, avg}}, "tot": ...}``
    in mW; ``memory`` ``{"RAM": {tot, used}, "SWAP": {tot, used, cached}}`` in KB; ``cpu``
    ``{"cpu": [{online, user, system, nice, freq: {cur} kHz}]}``; ``gpu`` ``{name: {status: {load},
    freq: {cur} kHz}}``.
    """
    r = Reading(source="jtop")
    for name, t in temperature.items():
        temp = _num(t.get("temp")) if isinstance(t, dict) else None
        online = isinstance(t, dict) and t.get("online", True) and temp is not None and temp > OFFLINE_C
        r.temps[str(name).lower()] = temp if online else None
    for name, rail in (power.get("rail") or {}).items():
        inst, avg = _num(rail.get("power")), _num(rail.get("avg"))
        if inst is not None:
            r.rails[str(name)] = Rail(inst_mw=inst, avg_mw=avg if avg is not None else inst)
    total = power.get("tot") or {}
    if _num(total.get("power")) is not None and "VDD_IN" not in r.rails:
        inst = float(total["power"])
        avg = _num(total.get("avg"))
        # jtop's own total: keep it as the VDD_IN rail so the total is the module input, not a sum
        r.rails["VDD_IN"] = Rail(inst_mw=inst, avg_mw=avg if avg is not None else inst)
    ram, swap = memory.get("RAM") or {}, memory.get("SWAP") or {}
    if _num(ram.get("tot")) is not None:
        r.ram_total_mb = round(float(ram["tot"]) / 1024, 3)
        r.ram_used_mb = round(float(ram.get("used") or 0) / 1024, 3)
        r.ram_available_mb = round(r.ram_total_mb - r.ram_used_mb, 3)
    if _num(swap.get("tot")) is not None:
        r.swap_total_mb = round(float(swap["tot"]) / 1024, 3)
        r.swap_used_mb = round(float(swap.get("used") or 0) / 1024, 3)
        cached = _num(swap.get("cached"))
        r.swap_cached_mb = None if cached is None else round(cached / 1024, 3)
    for core in (cpu or {}).get("cpu") or []:
        if not core.get("online", False):
            r.cpu.append(Core(online=False))
            continue
        busy = sum(_num(core.get(k)) or 0.0 for k in ("user", "nice", "system"))
        cur = _num((core.get("freq") or {}).get("cur"))
        r.cpu.append(Core(online=True, load_pct=round(busy, 1), freq_mhz=None if cur is None else int(cur / 1000)))
    for g in (gpu or {}).values():
        if not isinstance(g, dict):
            continue
        load = _num((g.get("status") or {}).get("load"))
        freq = g.get("freq") or {}
        clusters = [int(f / 1000) for f in freq.get("GPC") or [] if _num(f) is not None]
        cur = _num(freq.get("cur"))
        r.gpu_load_pct = load
        r.gpu_freq_mhz = clusters or ([] if cur is None else [int(cur / 1000)])
        break
    return r


class JtopSource(Source):
    name = "jtop"

    def __init__(self, factory: JtopFactory) -> None:
        super().__init__()
        self._factory = factory
        self._jtop: Any = None

    async def start(self) -> None:
        handle = self._factory()
        self._jtop = handle
        await asyncio.wait_for(asyncio.to_thread(handle.start), JTOP_START_TIMEOUT_S)

    def _read_sync(self) -> Reading:
        j = self._jtop
        return reading_from_jtop(
            dict(j.temperature or {}),
            dict(j.power or {}),
            dict(j.memory or {}),
            dict(getattr(j, "cpu", None) or {}),
            dict(getattr(j, "gpu", None) or {}),
        )

    async def read(self) -> Reading | None:
        if self._jtop is None:
            return None
        try:
            return await asyncio.to_thread(self._read_sync)
        except Exception as exc:  # a dead jtop service raises its own exception types
            log.warning("jtop read failed: %s", exc)
            return None

    async def close(self) -> None:
        handle, self._jtop = self._jtop, None
        if handle is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(handle.close)


# --- tegrastats ------------------------------------------------------------------------------


class TegrastatsSource(Source):
    """Runs ``tegrastats --interval <ms>`` and keeps the newest parsed line; restarts it if it dies."""

    name = "tegrastats"

    def __init__(self, executable: str, interval_s: float, first_line_timeout: float | None = None) -> None:
        super().__init__()
        self.executable = executable
        self.interval_s = interval_s
        self.first_line_timeout = first_line_timeout or max(3.0, 3 * interval_s)
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._latest: Reading | None = None
        self._first = asyncio.Event()
        self.lines = 0
        self.bad_lines = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def _spawn(self) -> asyncio.subprocess.Process:
        interval_ms = str(max(1, round(self.interval_s * 1000)))
        self._proc = await asyncio.create_subprocess_exec(
            self.executable,
            "--interval",
            interval_ms,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return self._proc

    async def start(self) -> None:
        proc = await self._spawn()
        self._task = asyncio.create_task(self._run(proc), name="zoe-tegrastats")
        first = asyncio.create_task(self._first.wait())
        try:
            # whichever comes first: a parsed line, tegrastats exiting, or the timeout
            await asyncio.wait(
                {first, self._task}, timeout=self.first_line_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # the daemon stops while we wait: leave no tegrastats behind
            first.cancel()
            await self.close()
            raise
        first.cancel()
        if not self._first.is_set():
            code = proc.returncode
            await self.close()
            how = f"exited with {code}" if code is not None else f"printed nothing in {self.first_line_timeout:g} s"
            raise RuntimeError(f"{self.executable} {how} before a parsable line")

    async def _run(self, proc: asyncio.subprocess.Process) -> None:
        backoff = 1.0
        while True:
            await self._consume(proc)
            code = await proc.wait()
            if not self._first.is_set():
                return  # never worked: start() reports it
            log.warning("tegrastats exited with %s; restarting in %.0f s", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
            try:
                proc = await self._spawn()
            except OSError as exc:
                log.warning("cannot restart tegrastats: %s", exc)

    async def _consume(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                return
            try:
                reading = parse_line(raw.decode(errors="replace"), at=time.time())
            except TegrastatsError:
                self.bad_lines += 1
                continue
            self.lines += 1
            self._latest = reading
            self._first.set()

    async def read(self) -> Reading | None:
        latest = self._latest
        # a line older than a few intervals means tegrastats stalled: report nothing, not old figures
        if latest is None or time.time() - latest.at > max(5.0, 5 * self.interval_s):
            return None
        return latest

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


# --- psutil + /sys + /proc ----------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def sensor_name(zone_type: str) -> str:
    """``tj-thermal`` -> ``tj``, ``CPU-therm`` -> ``cpu`` (the names tegrastats prints)."""
    name = zone_type.strip().lower()
    for suffix in ("-thermal", "_thermal", "-therm", "_therm"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def read_thermal_zones(root: Path) -> dict[str, float | None]:
    """Every ``/sys/class/thermal/thermal_zone*``: name -> degrees C (``None`` when offline)."""
    temps: dict[str, float | None] = {}
    base = root / "sys/class/thermal"
    zones = sorted(base.glob("thermal_zone*"), key=lambda p: int(p.name[12:]) if p.name[12:].isdigit() else 0)
    for zone in zones:
        kind = _read(zone / "type")
        if not kind:
            continue
        name = sensor_name(kind)
        if name in temps:
            name = f"{name}{zone.name[12:]}"
        raw = _read(zone / "temp")
        try:
            temp: float | None = int(raw or "") / 1000
        except ValueError:
            temp = None
        temps[name] = None if temp is None or temp <= OFFLINE_C else round(temp, 3)
    return temps


def read_meminfo(root: Path) -> dict[str, int]:
    """``/proc/meminfo`` in kB."""
    out: dict[str, int] = {}
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def read_ina3221(root: Path) -> dict[str, Rail]:
    """Jetson power monitors under hwmon (what tegrastats reads): rail -> mW from mV x mA."""
    rails: dict[str, Rail] = {}
    for hwmon in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        if (_read(hwmon / "name") or "") != "ina3221":
            continue
        for label_file in sorted(hwmon.glob("in*_label")):
            n = label_file.name[2:-6]
            label = _read(label_file)
            volts, amps = _read(hwmon / f"in{n}_input"), _read(hwmon / f"curr{n}_input")
            if not label or label.lower().startswith("sum") or not volts or not amps:
                continue
            try:
                mw = round(int(volts) * int(amps) / 1000, 1)
            except ValueError:
                continue
            rails[label] = Rail(inst_mw=mw, avg_mw=mw)
    return rails


def read_jetson_gpu(root: Path) -> tuple[float | None, list[int]]:
    """Jetson's integrated GPU: load in per mille under ``gpu.0/load``, clock under devfreq."""
    for base in (root / "sys/devices/platform/gpu.0", root / "sys/devices/gpu.0"):
        raw = _read(base / "load")
        if raw is None or not raw.isdigit():
            continue
        freqs = []
        for cur in sorted(base.glob("devfreq/*/cur_freq")):
            text = _read(cur)
            if text and text.isdigit():
                freqs.append(int(text) // 1_000_000)
        return int(raw) / 10, freqs
    return None, []


class PsutilSource(Source):
    """Any Linux: /proc/meminfo, /sys/class/thermal (psutil's sensors when there are none), psutil CPU."""

    name = "psutil"

    def __init__(self, root: Path = Path("/")) -> None:
        super().__init__()
        self.root = root

    async def start(self) -> None:
        psutil.cpu_percent(percpu=True)  # the first call only sets the baseline
        if not read_meminfo(self.root):
            raise OSError(f"{self.root / 'proc/meminfo'} is not readable")

    def _read_sync(self) -> Reading:
        r = Reading(source=self.name)
        mem = read_meminfo(self.root)
        if "MemTotal" in mem:
            r.ram_total_mb = round(mem["MemTotal"] / 1024, 3)
            available = mem.get("MemAvailable", mem.get("MemFree", 0))
            r.ram_available_mb = round(available / 1024, 3)
            r.ram_used_mb = round(r.ram_total_mb - r.ram_available_mb, 3)
        if "SwapTotal" in mem:
            r.swap_total_mb = round(mem["SwapTotal"] / 1024, 3)
            r.swap_used_mb = round((mem["SwapTotal"] - mem.get("SwapFree", 0)) / 1024, 3)
            r.swap_cached_mb = round(mem.get("SwapCached", 0) / 1024, 3)
        r.temps = read_thermal_zones(self.root)
        if not r.temps:
            r.temps = psutil_temperatures()
        r.rails = read_ina3221(self.root)
        r.gpu_load_pct, r.gpu_freq_mhz = read_jetson_gpu(self.root)
        loads = psutil.cpu_percent(percpu=True)
        try:
            freqs = psutil.cpu_freq(percpu=True) or []
        except (OSError, NotImplementedError):
            freqs = []
        for i, load in enumerate(loads):
            freq = int(freqs[i].current) if i < len(freqs) and freqs[i].current else None
            r.cpu.append(Core(online=True, load_pct=float(load), freq_mhz=freq))
        return r

    async def read(self) -> Reading | None:
        return await asyncio.to_thread(self._read_sync)


def psutil_temperatures() -> dict[str, float | None]:
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return {}
    temps: dict[str, float | None] = {}
    for chip, entries in sensors.items():
        for i, entry in enumerate(entries):
            name = (entry.label or chip).lower()
            if name in temps:
                name = f"{name}{i}"
            temps[name] = None if entry.current <= OFFLINE_C else entry.current
    return temps


# --- the chain -----------------------------------------------------------------------------------


async def choose_source(
    interval_s: float = 1.0,
    *,
    jtop: JtopCheck = check_jtop,
    which: Callable[[str], str | None] = shutil.which,
    root: Path = Path("/"),
) -> Source:
    """The first source of jtop -> tegrastats -> psutil that works here, started.

    ``source.reason`` names the source used and why each earlier one was passed over. ``jtop`` and
    ``which`` are injectable so tests can pretend a jtop service or a ``tegrastats`` binary exists.
    """
    passed_over: list[str] = []
    factory, why = jtop()
    if factory is not None:
        source: Source = JtopSource(factory)
        try:
            await source.start()
            source.reason = f"jtop: {why}"
            return source
        except asyncio.CancelledError:
            await source.close()
            raise
        except Exception as exc:
            await source.close()
            passed_over.append(f"jtop failed to start: {str(exc) or type(exc).__name__}")
    else:
        passed_over.append(why)

    executable = which("tegrastats")
    if executable:
        teg = TegrastatsSource(executable, interval_s)
        try:
            await teg.start()
            teg.reason = f"tegrastats: running {executable} --interval {round(interval_s * 1000)}"
            teg.reason += f" ({'; '.join(passed_over)})"
            return teg
        except (OSError, RuntimeError) as exc:
            passed_over.append(f"tegrastats failed: {exc}")
    else:
        passed_over.append("no tegrastats on PATH")

    fallback = PsutilSource(root)
    await fallback.start()
    fallback.reason = f"psutil: /proc/meminfo, /sys/class/thermal and psutil ({'; '.join(passed_over)})"
    return fallback
