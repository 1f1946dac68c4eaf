"""What the usage record costs a request: metrics alone vs metrics + a committed ledger row, side by side.

Every generation request waits for its ledger row to be committed (by the writer thread) before
its last bytes go out. This measures, in-process, the time ``Observer.finish`` takes with 1 and
with 50 requests finishing at once (rows that arrive together share one commit), against the
same observer without a ledger. The ledger file goes to a temporary directory on the same disk
as the state directory unless ``--dir`` says otherwise.

    .venv/bin/python bench/usage_overhead.py [--requests 2000] [--dir /var/lib/zoe-edge]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoe_edge.access.budget import SpendBook  # noqa: E402
from zoe_edge.access.limits import Limiter  # noqa: E402
from zoe_edge.registry import parse_registry  # noqa: E402
from zoe_edge.usage.ledger import Ledger  # noqa: E402
from zoe_edge.usage.metrics import Metrics  # noqa: E402
from zoe_edge.usage.observer import Observer  # noqa: E402


def record(observer: Observer, i: int):  # type: ignore[no-untyped-def]
    rec = observer.start(f"r{i}", "/v1/chat/completions")
    rec.key_id, rec.route, rec.target, rec.locality = "ha", "zoe-chat", "local:smol", "local"
    rec.prompt_tokens, rec.completion_tokens, rec.ttft_ms, rec.status = 40, 12, 3.0, 200
    return rec


async def run(observer: Observer, requests: int, concurrency: int) -> list[float]:
    took: list[float] = []

    async def one(i: int) -> None:
        rec = record(observer, i)
        t = time.perf_counter()
        await observer.finish(rec)
        took.append(time.perf_counter() - t)

    for start in range(0, requests, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(requests, start + concurrency))))
    return took


def line(label: str, took: list[float]) -> str:
    q = statistics.quantiles(took, n=100)
    return f"{label:<34} p50 {q[49] * 1e6:8.1f} us   p99 {q[98] * 1e6:8.1f} us"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    registry = parse_registry({"default": "m", "models": {"m": {"file": "m.gguf"}}})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ledger = Ledger(Path(tmp) / "usage.sqlite3", retention_days=None)
        await ledger.start()
        with_ledger = Observer(registry, Metrics(), ledger, SpendBook(), Limiter())
        metrics_only = Observer(registry, Metrics(), None, SpendBook(), Limiter())
        for concurrency in (1, 50):
            base = await run(metrics_only, args.requests, concurrency)
            full = await run(with_ledger, args.requests, concurrency)
            print(line(f"metrics only, {concurrency} at once", base))
            print(line(f"metrics + ledger row, {concurrency} at once", full))
            print(f"{'':<34} ledger adds {(statistics.median(full) - statistics.median(base)) * 1e6:.1f} us (p50)")
        await ledger.close()
        print(f"rows written: {ledger.written_rows}, failed: {ledger.failed_rows}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
