"""Swap time SmolLM2 -> Gemma through the daemon versus a cold load of Gemma in a fresh process.

Daemon side: SmolLM2 is loaded and a spare worker is waiting; we time ``POST /admin/models/gemma/load``
end to end (drain, end the SmolLM2 process, load Gemma in the spare, answer). Cold side: spawn a
new Python process that imports llama_cpp and constructs ``Llama`` on the same file with the same
context, batch and threads; we time from spawn to "loaded". Repetitions alternate.

    .venv/bin/python bench/swap.py [--reps 7] [--quick] [--json OUT]

Target: daemon / cold <= 1.25.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import Report, add_arguments  # noqa: E402
from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry  # noqa: E402
from zoe_edge.registry import ensure_model_file, load_registry  # noqa: E402

N_CTX, N_BATCH = 2048, 512
COLD = """
import sys
import llama_cpp
llama_cpp.Llama(sys.argv[1], n_ctx=int(sys.argv[2]), n_batch=int(sys.argv[3]), n_threads=int(sys.argv[4]),
                n_threads_batch=int(sys.argv[4]), verbose=False)
print("loaded", flush=True)
sys.stdin.read()
"""


def wait_spare(d: Daemon, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.status()["slot"]["spare_worker"]:
            return
        time.sleep(0.05)
    raise SystemExit("the daemon never started a spare worker")


def daemon_swap(d: Daemon, spare: bool) -> tuple[float, float]:
    """(end-to-end seconds, the daemon's own recorded swap duration in seconds)."""
    r = httpx.post(d.url + "/admin/models/smol/load", timeout=120)
    r.raise_for_status()
    if spare:
        wait_spare(d)
    started = time.perf_counter()
    r = httpx.post(d.url + "/admin/models/gemma/load", timeout=120)
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    swap = d.status()["swaps"][-1]
    assert swap["from"] == "smol" and swap["to"] == "gemma", swap
    return elapsed, swap["duration_ms"] / 1000


def cold_load(path: Path, threads: int) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", COLD, str(path), str(N_CTX), str(N_BATCH), str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - started
    proc.kill()
    proc.wait()
    if line.strip() != "loaded":
        raise SystemExit(f"cold load failed: {line!r}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-spare", action="store_true", help="turn the pre-spawned spare worker off (ablation)")
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.reps = 2
    report = Report("swap", "Swap SmolLM2 -> Gemma through the daemon vs a cold load of Gemma")

    state = Path(os.environ.setdefault("ZOE_STATE_DIR", str(REPO / ".state")))
    registry = load_registry(REPO / "models.yaml")
    smol = ensure_model_file(registry.models["smollm2-135m"], REPO, state)
    gemma = ensure_model_file(registry.models["gemma3-270m"], REPO, state)

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        common = {"n_ctx": N_CTX, "n_batch": N_BATCH, "n_threads": args.threads}
        reg = write_registry(
            tmp, {"smol": smollm_entry(smol, **common), "gemma": smollm_entry(gemma, chat_format="gemma", **common)}
        )
        if args.no_spare:
            reg.write_text(reg.read_text() + "admission:\n  spare_worker: false\n")
        d = start_daemon(reg, tmp)
        try:
            daemon_swap(d, not args.no_spare)  # warm-up: page cache and header cache, discarded
            cold_load(gemma, args.threads)
            rows = []
            for rep in range(args.reps):
                swap, recorded = daemon_swap(d, not args.no_spare)
                cold = cold_load(gemma, args.threads)
                rows.append((swap, cold))
                report.line(
                    f"rep {rep + 1}: daemon swap {swap * 1000:6.0f} ms (recorded {recorded * 1000:5.0f} ms)   "
                    f"cold load {cold * 1000:6.0f} ms   ratio {swap / cold:.3f}"
                )
        finally:
            d.stop()

    swap_med = statistics.median(r[0] for r in rows)
    cold_med = statistics.median(r[1] for r in rows)
    ratio = swap_med / cold_med
    report.line()
    report.line(
        f"{gemma.name}: n_ctx {N_CTX}, n_batch {N_BATCH}, threads {args.threads}, {args.reps} reps, "
        f"spare worker {'off' if args.no_spare else 'on'}"
    )
    report.line(
        f"median: daemon swap smol->gemma {swap_med * 1000:.0f} ms, cold load in a fresh process "
        f"{cold_med * 1000:.0f} ms"
    )
    met = report.target("swap daemon / cold load", "<= 1.25", ratio, "ratio")
    report.line(f"ratio daemon/cold: {ratio:.3f}; target <= 1.25: {report.verdict(met)}")
    report.data = {
        "reps": args.reps,
        "threads": args.threads,
        "spare_worker": not args.no_spare,
        "daemon_swap_ms": [round(r[0] * 1000, 1) for r in rows],
        "cold_load_ms": [round(r[1] * 1000, 1) for r in rows],
    }
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
