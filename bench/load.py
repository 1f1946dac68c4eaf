"""Many concurrent clients against the local model with a loopback cloud fake behind it.

A daemon serves SmolLM2 with two ways in: the route ``edge`` (SmolLM2, falling back to the cloud
fake when the local wait would exceed 1 s) and the bare model ``m`` (local only: when the queue is
full or the wait too long it must answer 503 with Retry-After). ``--clients`` clients (aiohttp)
each loop for ``--duration`` seconds over a mix of short chats and streams through both. Every
answer is classified; anything other than 2xx, or a 429/503 carrying Retry-After, is an error
(as is a stream that does not end with ``[DONE]``, a timeout or a broken connection). Once a
second (from the end of the one-second ramp-up) the daemon's RSS and open file descriptors are
sampled (psutil); the first and the last ``--window`` seconds are compared.

    .venv/bin/python bench/load.py [--clients 200] [--duration 60] [--quick] [--json OUT]

Targets: 0 errors; daemon RSS growth (last window mean / first window mean - 1) < 10%;
open fds flat: last window mean / first window mean <= 1.10. The fds are also counted by kind
(sockets of the load's clients, sockets to the cloud fake, everything else) and once before the load
and once after its clients hang up: open connections rise and fall with the load, a leak stays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import Report, add_arguments  # noqa: E402
from tests.conftest import smollm_entry, start_daemon, write_registry  # noqa: E402
from tests.fakes.threaded import FakeThread  # noqa: E402
from zoe_edge.bench.scoring import percentile  # noqa: E402
from zoe_edge.registry import ensure_model_file, load_registry  # noqa: E402

KEY_ENV = {"ZOE_BENCH_CLOUD_KEY": "sk-bench-not-a-real-key"}
CHATS = ["Say hi.", "Name a colour.", "What is 2 + 2?", "Give me a one-word greeting.", "Name a fruit."]


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)

    def add(self, outcome: str, seconds: float) -> None:
        self.latencies[outcome].append(seconds)

    def error(self, what: str, seconds: float) -> None:
        self.add("error", seconds)
        if len(self.errors) < 20:
            self.errors.append(what)


async def one_request(session: aiohttp.ClientSession, url: str, rng: random.Random, tally: Tally) -> None:
    stream = rng.random() < 0.5
    model = "edge" if rng.random() < 0.6 else "m"
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": rng.choice(CHATS)}],
        "max_tokens": 24 if stream else 8,
        "temperature": 0,
        "stream": stream,
    }
    kind = "stream" if stream else "chat"
    started = time.perf_counter()
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            if r.status in (429, 503):
                await r.read()
                elapsed = time.perf_counter() - started
                if r.headers.get("Retry-After"):
                    tally.add(f"{kind} {model} {r.status} (Retry-After)", elapsed)
                else:
                    tally.error(f"{r.status} without Retry-After", elapsed)
                return
            if r.status // 100 != 2:
                text = await r.text()
                tally.error(f"{r.status}: {text[:200]}", time.perf_counter() - started)
                return
            served = r.headers.get("x-zoe-served-by", "?")
            where = "local" if served.startswith("local:") else "cloud"
            if stream:
                done = False
                async for raw in r.content:
                    line = raw.decode().strip()
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: {") and '"error"' in line:
                        tally.error(f"error event in stream: {line[:200]}", time.perf_counter() - started)
                        return
                if not done:
                    tally.error("stream ended without [DONE]", time.perf_counter() - started)
                    return
            else:
                payload = json.loads(await r.read())
                if not payload.get("choices"):
                    tally.error(f"no choices: {str(payload)[:200]}", time.perf_counter() - started)
                    return
            tally.add(f"{kind} {model} 200 {where}", time.perf_counter() - started)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        tally.error(f"{type(exc).__name__}: {exc}", time.perf_counter() - started)


async def client(url: str, seed: int, until: float, tally: Tally, session: aiohttp.ClientSession) -> None:
    rng = random.Random(seed)
    await asyncio.sleep(rng.random())  # spread the start over a second
    while time.monotonic() < until:
        await one_request(session, url, rng, tally)
        # a client that was told to retry later waits a little (not the whole Retry-After: this is a load test)
        await asyncio.sleep(rng.uniform(0.05, 0.25))


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    client_socks: int  # accepted connections from the load's clients
    upstream_socks: int  # connections to the cloud fake

    @property
    def other_fds(self) -> int:
        """What is neither kind of socket: files, the worker's unix sockets, the ledger; where a leak would show."""
        return self.fds - self.client_socks - self.upstream_socks


def take_sample(proc: psutil.Process, t: float, port: int, upstream_port: int) -> Sample:
    conns = proc.net_connections(kind="tcp")
    clients = sum(1 for c in conns if c.laddr and c.laddr.port == port and c.raddr)
    upstream = sum(1 for c in conns if c.raddr and c.raddr.port == upstream_port)
    return Sample(t, proc.memory_info().rss, proc.num_fds(), clients, upstream)


async def sample(pid: int, until: float, samples: list[Sample], port: int, upstream_port: int) -> None:
    proc = psutil.Process(pid)
    await asyncio.sleep(1.0)  # the clients spread their start over the first second: sample under load
    start = time.monotonic()
    while time.monotonic() < until:
        try:
            samples.append(take_sample(proc, time.monotonic() - start, port, upstream_port))
        except psutil.Error:
            return
        await asyncio.sleep(1.0)


async def run_load(
    url: str, pid: int, clients: int, duration: float, upstream_port: int
) -> tuple[Tally, list[Sample], Sample, Sample]:
    """The load, its samples, and one sample each from before it and from after its clients hung up."""
    tally = Tally()
    samples: list[Sample] = []
    port = int(url.rsplit(":", 1)[1])
    proc = psutil.Process(pid)
    before = take_sample(proc, -1.0, port, upstream_port)
    until = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(client(url, seed, until, tally, session)) for seed in range(clients)]
        await asyncio.gather(sample(pid, until, samples, port, upstream_port), *tasks)
    await asyncio.sleep(3.0)  # the daemon notices the closed connections
    after = take_sample(proc, duration + 3.0, port, upstream_port)
    return tally, samples, before, after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--window", type=float, default=10.0, help="seconds compared at the start and the end")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.duration, args.window = 50, 15.0, 4.0
    report = Report("load", f"{args.clients} concurrent clients for {args.duration:g} s, local model + cloud fallback")

    state = Path(os.environ.setdefault("ZOE_STATE_DIR", str(REPO / ".state")))
    registry = load_registry(REPO / "models.yaml")
    path = ensure_model_file(registry.models["smollm2-135m"], REPO, state)

    with tempfile.TemporaryDirectory() as tmp_s, FakeThread() as fake:
        tmp = Path(tmp_s)
        reg = write_registry(tmp, {"m": smollm_entry(path, n_threads=args.threads)})
        data = yaml.safe_load(reg.read_text())
        data["providers"] = {
            "cloud": {"type": "openai", "base_url": fake.url, "api_key_env": "ZOE_BENCH_CLOUD_KEY", "retries": 1}
        }
        data["routes"] = {"edge": {"targets": ["m", "cloud:gpt-fake"], "deadline": "1s"}}
        data["admission"] = {"max_queue": 32, "deadline": "10s"}
        reg.write_text(yaml.safe_dump(data))
        daemon = start_daemon(reg, tmp, env=KEY_ENV)
        try:
            upstream_port = fake.port
            tally, samples, before, after = asyncio.run(
                run_load(daemon.url, daemon.proc.pid, args.clients, args.duration, upstream_port)
            )
            alive = daemon.proc.poll() is None
        finally:
            daemon.stop()
        cloud_requests = len(fake.requests)

    total = sum(len(v) for v in tally.latencies.values())
    errors = len(tally.latencies.get("error", []))
    report.line(
        f"{args.clients} clients, {args.duration:g} s, SmolLM2 {args.threads} threads, route edge = m then cloud fake "
        f"(deadline 1 s), max_queue 32; {total} requests ({total / args.duration:.1f}/s), "
        f"{cloud_requests} reached the cloud fake; daemon {'still running' if alive else 'DIED'}"
    )
    report.line(f"{'outcome':40s} {'count':>6s} {'p50 ms':>8s} {'p99 ms':>8s}")
    table = {}
    for outcome in sorted(tally.latencies):
        lat = tally.latencies[outcome]
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        table[outcome] = {"count": len(lat), "p50_ms": round(p50, 1), "p99_ms": round(p99, 1)}
        report.line(f"{outcome:40s} {len(lat):6d} {p50:8.0f} {p99:8.0f}")
    for what in tally.errors[:5]:
        report.line(f"  error: {what}")

    first = [s for s in samples if s.t < args.window]
    last = [s for s in samples if s.t >= samples[-1].t - args.window] if samples else []

    def mean(window: list[Sample], what: str) -> float:
        return statistics.mean(float(getattr(s, what)) for s in window)

    rss0, rss1 = mean(first, "rss"), mean(last, "rss")
    fd0, fd1 = mean(first, "fds"), mean(last, "fds")
    growth = rss1 / rss0 - 1
    report.line(
        f"daemon RSS: first {args.window:g} s {rss0 / 2**20:.1f} MiB, last {args.window:g} s {rss1 / 2**20:.1f} MiB "
        f"(growth {growth * 100:+.1f}%); open fds: {fd0:.0f} -> {fd1:.0f} (ratio {fd1 / fd0:.3f})"
    )
    # where the fds are: sockets the clients hold open come and go with the load; a leak shows in the rest
    report.line(
        "open fds by kind, first -> last window: "
        + ", ".join(
            f"{label} {mean(first, what):.0f} -> {mean(last, what):.0f}"
            for label, what in (
                ("client sockets", "client_socks"),
                ("cloud sockets", "upstream_socks"),
                ("other", "other_fds"),
            )
        )
    )
    report.line(
        f"open fds before the load {before.fds} (other {before.other_fds}), 3 s after its clients hung up "
        f"{after.fds} (other {after.other_fds}, client sockets {after.client_socks}, cloud sockets "
        f"{after.upstream_socks})"
    )
    met_err = report.target(
        "errors (not 2xx, not 429/503 with Retry-After)", "<= 0", float(errors + (0 if alive else 1))
    )
    met_rss = report.target("daemon RSS growth, last vs first window", "< 0.10", growth, "fraction")
    met_fds = report.target("open fds, last / first window", "<= 1.10", fd1 / fd0, "ratio")
    other0, other1 = mean(first, "other_fds"), mean(last, "other_fds")
    met_other = report.target("fds other than sockets, last / first window", "<= 1.10", other1 / other0, "ratio")
    report.line(
        f"errors {errors}: {report.verdict(met_err)}; RSS growth {growth * 100:+.1f}% (< 10%): "
        f"{report.verdict(met_rss)}; fds ratio {fd1 / fd0:.3f} (<= 1.10): {report.verdict(met_fds)}; "
        f"fds other than sockets {other1 / other0:.3f} (<= 1.10): {report.verdict(met_other)}"
    )
    report.data = {
        "clients": args.clients,
        "duration_s": args.duration,
        "window_s": args.window,
        "outcomes": table,
        "errors": tally.errors,
        "cloud_requests": cloud_requests,
        "samples": [
            {
                "t": round(s.t, 1),
                "rss_mib": round(s.rss / 2**20, 1),
                "fds": s.fds,
                "client_socks": s.client_socks,
                "upstream_socks": s.upstream_socks,
            }
            for s in samples
        ],
        "fds_before": before.fds,
        "fds_after": after.fds,
    }
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
