"""Time to first token of a Home Assistant turn after an unrelated request, and after a swap and back.

Two daemons serve the same SmolLM2 file with the same context and threads; one keeps KV snapshots
of long prefixes (the default plan), the other has ``prefix_cache: 0``. Each repetition sends the
same interleaved workload to both, one daemon after the other: A (the ~2k-token HA system prompt +
a voice command), B (an unrelated short chat, which replaces A's KV), A' (the HA system prompt + a
different command). The figure is A''s time to first token measured at the client (streamed);
the cache-off daemon processes A' cold, the cache-on one restores the HA prefix and evaluates only
the new user turn. Texts must be equal (temperature 0).

Swap (``--scenario swap``): two daemons, each with the voice model ``m`` (n_ctx 4096) and a second
model ``m2`` (the same file at n_ctx 2048, so asking for it is a real swap: the ``m`` worker ends,
another loads). Each repetition: A on ``m``, B on ``m2`` (the swap away), A' on ``m`` (the swap
back). One daemon keeps prefix snapshots on disk across workers (the default), the other runs
with ``ZOE_PREFIX_PERSIST=0``; A''s TTFT after the swap back (model load included) is compared.

    .venv/bin/python bench/prefix.py [--reps 5] [--scenario interleave|swap|both] [--quick] [--json OUT]

Targets: warm / cold <= 0.15 (median TTFT of A' after B); disk / cold <= 0.25 (A' after a swap back).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import Report, add_arguments  # noqa: E402
from bench.workload import OTHER_PROMPTS, ha_messages, stream_chat  # noqa: E402
from tests.conftest import smollm_entry, start_daemon, write_registry  # noqa: E402
from zoe_edge.bench import ha  # noqa: E402
from zoe_edge.registry import ensure_model_file, load_registry  # noqa: E402

N_CTX = 4096
TARGET = 0.15
SWAP_TARGET = 0.25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--scenario", choices=["interleave", "swap", "both"], default="both")
    add_arguments(parser)
    args = parser.parse_args()
    reps = 2 if args.quick else args.reps
    report = Report("prefix", "Prefix reuse: TTFT of a Home Assistant turn after an unrelated request")

    state = Path(os.environ.setdefault("ZOE_STATE_DIR", str(REPO / ".state")))
    registry = load_registry(REPO / "models.yaml")
    path = ensure_model_file(registry.models["smollm2-135m"], REPO, state)
    if args.scenario in ("interleave", "both"):
        interleave(report, path, reps, args.threads, args.max_tokens)
    if args.scenario in ("swap", "both"):
        swap(report, path, reps, args.threads, args.max_tokens)
    report.write(args.json)
    return 0


def interleave(report: Report, path: Path, reps: int, threads: int, max_tokens: int) -> None:
    """A, B, A' on one model: the in-RAM prefix cache on vs ``prefix_cache: 0``."""
    turns = ha.user_turns()

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        daemons = {}
        try:
            for label, cap in (("warm", None), ("cold", 0)):
                d_tmp = tmp / label
                d_tmp.mkdir()
                entry = smollm_entry(path, n_ctx=N_CTX, n_threads=threads)
                if cap is not None:
                    entry["prefix_cache"] = cap
                # the snapshots on disk are measured by the swap scenario, not here
                daemons[label] = start_daemon(write_registry(d_tmp, {"m": entry}), d_tmp)
            with httpx.Client() as client:
                rows = []
                for rep in range(reps):
                    a = ha_messages(turns[(2 * rep) % len(turns)])
                    b = [{"role": "user", "content": OTHER_PROMPTS[rep % len(OTHER_PROMPTS)]}]
                    a2 = ha_messages(turns[(2 * rep + 1) % len(turns)])
                    result = {}
                    for label, d in daemons.items():
                        stream_chat(client, d.url, a, max_tokens)
                        stream_chat(client, d.url, b, max_tokens)
                        result[label] = stream_chat(client, d.url, a2, max_tokens)
                    w, c = result["warm"], result["cold"]
                    if w.text != c.text:
                        raise SystemExit(f"rep {rep + 1}: texts differ at temperature 0: {w.text!r} vs {c.text!r}")
                    rows.append((w, c))
                    report.line(
                        f"rep {rep + 1}: A' after B: cache on ttft {w.ttft_s * 1000:6.0f} ms "
                        f"(cached {w.cached_tokens} tokens)   cache off ttft {c.ttft_s * 1000:6.0f} ms "
                        f"(cached {c.cached_tokens})   ratio {w.ttft_s / c.ttft_s:.3f}"
                    )
            stats = daemons["warm"].status()["slot"]["prefix_cache"]
            plan = daemons["warm"].status()["slot"]["plan"]
        finally:
            for d in daemons.values():
                d.stop()

    warm = statistics.median(r[0].ttft_s for r in rows)
    cold = statistics.median(r[1].ttft_s for r in rows)
    ratio = warm / cold
    report.line()
    report.line(
        f"{path.name}: n_ctx {N_CTX}, threads {threads}, {reps} reps, HA system prompt + user turn "
        f"({rows[0][1].cached_tokens or 0} cached when cold, {rows[-1][0].cached_tokens} when warm)"
    )
    report.line(
        f"prefix cache: {plan['prefix_cache_reason']}; after the run {stats['snapshots']} snapshots, "
        f"{stats['bytes_used'] / 1e6:.1f} MB, {stats['restores']} restores, {stats['saves']} saves, "
        f"last save {stats['last_save_ms']:.0f} ms, last restore {stats['last_restore_ms']:.0f} ms"
    )
    report.line(f"median TTFT of A' after B: cache on {warm * 1000:.0f} ms, cache off {cold * 1000:.0f} ms")
    met = report.target("TTFT warm / cold (A' after B)", f"<= {TARGET}", ratio, "ratio")
    report.line(f"ratio warm/cold: {ratio:.3f}; target <= {TARGET}: {report.verdict(met)}")
    report.data |= {
        "reps": reps,
        "threads": threads,
        "n_ctx": N_CTX,
        "warm_ttft_ms": [round(r[0].ttft_s * 1000, 1) for r in rows],
        "cold_ttft_ms": [round(r[1].ttft_s * 1000, 1) for r in rows],
        "warm_cached_tokens": [r[0].cached_tokens for r in rows],
        "prefix_cache": stats,
    }


def swap(report: Report, path: Path, reps: int, threads: int, max_tokens: int) -> None:
    """A on m, B on m2 (a swap), A' on m (the swap back): prefix snapshots on disk vs ``ZOE_PREFIX_PERSIST=0``."""
    turns = ha.user_turns()
    report.line()
    report.line("after a swap to a second model and back (A on m, B on m2, A' on m; A''s TTFT includes the load):")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        daemons = {}
        try:
            for label, persist in (("disk", "1"), ("cold", "0")):
                d_tmp = tmp / label
                d_tmp.mkdir()
                models = {
                    "m": smollm_entry(path, n_ctx=N_CTX, n_threads=threads),
                    "m2": smollm_entry(path, n_ctx=2048, n_threads=threads),
                }
                registry = write_registry(d_tmp, models)
                data = yaml.safe_load(registry.read_text())
                data["admission"] = {"min_residency": "0s"}  # swap as soon as the other model is asked for
                registry.write_text(yaml.safe_dump(data))
                env = {"ZOE_PREFIX_PERSIST": persist, "ZOE_PREFIX_DIR": str(d_tmp / "prefix")}
                daemons[label] = start_daemon(registry, d_tmp, env=env)
            rows = []
            with httpx.Client() as client:
                for rep in range(reps):
                    a = ha_messages(turns[(2 * rep) % len(turns)])
                    b = [{"role": "user", "content": OTHER_PROMPTS[rep % len(OTHER_PROMPTS)]}]
                    a2 = ha_messages(turns[(2 * rep + 1) % len(turns)])
                    result = {}
                    for label, d in daemons.items():
                        stream_chat(client, d.url, a, max_tokens, model="m")
                        stream_chat(client, d.url, b, max_tokens, model="m2")
                        result[label] = stream_chat(client, d.url, a2, max_tokens, model="m")
                    w, c = result["disk"], result["cold"]
                    if w.text != c.text:
                        raise SystemExit(f"rep {rep + 1}: texts differ at temperature 0: {w.text!r} vs {c.text!r}")
                    rows.append((w, c))
                    report.line(
                        f"rep {rep + 1}: A' after swap back: snapshots on disk ttft {w.ttft_s * 1000:6.0f} ms "
                        f"(cached {w.cached_tokens} tokens)   off ttft {c.ttft_s * 1000:6.0f} ms "
                        f"(cached {c.cached_tokens})   ratio {w.ttft_s / c.ttft_s:.3f}"
                    )
            stats = daemons["disk"].status()["slot"]["prefix_cache"]
        finally:
            for d in daemons.values():
                d.stop()
        on_disk = sorted((tmp / "disk" / "prefix").glob("*.zpfx"))
        disk_mb = sum(f.stat().st_size for f in on_disk) / 1e6
    warm = statistics.median(r[0].ttft_s for r in rows)
    cold = statistics.median(r[1].ttft_s for r in rows)
    ratio = warm / cold
    report.line(
        f"last m worker: {stats['disk_restores']} restores from disk, {stats['restores']} restores in all, "
        f"last restore {stats['last_restore_ms']:.0f} ms; {len(on_disk)} files, {disk_mb:.1f} MB on disk at the end"
    )
    report.line(
        f"median TTFT of A' after a swap back: snapshots on disk {warm * 1000:.0f} ms, off {cold * 1000:.0f} ms"
    )
    met = report.target("TTFT disk / cold (A' after a swap back)", f"<= {SWAP_TARGET}", ratio, "ratio")
    report.line(f"ratio disk/cold: {ratio:.3f}; target <= {SWAP_TARGET}: {report.verdict(met)}")
    report.data["swap"] = {
        "reps": reps,
        "disk_ttft_ms": [round(r[0].ttft_s * 1000, 1) for r in rows],
        "cold_ttft_ms": [round(r[1].ttft_s * 1000, 1) for r in rows],
        "disk_cached_tokens": [r[0].cached_tokens for r in rows],
        "prefix_cache": stats,
    }


if __name__ == "__main__":
    sys.exit(main())
