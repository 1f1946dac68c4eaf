"""Streamed generation speed through the daemon versus llama-cpp-python in-process, side by side.

Both sides use the same GGUF, threads, context, batch, prompt, max_tokens and greedy sampling; the
repetitions alternate (daemon, direct, daemon, ...) so drift in clock speed or temperature hits
both alike. Generation tokens/s is measured at the client: (tokens - 1) / (last token - first token),
so prompt processing is excluded and the daemon pays for everything between the model and the
client (IPC, JSON, SSE, HTTP).

    .venv/bin/python bench/throughput.py [--reps 7] [--max-tokens 256] [--stream-interval-ms 20] [--quick] [--json OUT]

Target: daemon / direct >= 0.97.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import Report, add_arguments  # noqa: E402
from bench.workload import stream_chat  # noqa: E402
from tests.conftest import smollm_entry, start_daemon, write_registry  # noqa: E402
from zoe_edge.registry import ensure_model_file, load_registry  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long, detailed essay about the history of bread, with many examples."}]


def daemon_run(client: httpx.Client, url: str, max_tokens: int) -> tuple[float, float, int]:
    """(ttft s, generation tok/s, completion tokens) for one streamed request through the daemon."""
    run = stream_chat(client, url, PROMPT, max_tokens)
    if run.completion_tokens is None or run.tokens_per_s is None:
        raise SystemExit("the daemon's stream carried no usage chunk; cannot count its tokens")
    return run.ttft_s, run.tokens_per_s, run.completion_tokens


def direct_run(llm: object, max_tokens: int) -> tuple[float, float, int]:
    """The same measurement on llama-cpp-python's own streaming chat completion, in this process."""
    started = time.perf_counter()
    first = last = 0.0
    finish = None
    for chunk in llm.create_chat_completion(  # type: ignore[attr-defined]
        messages=PROMPT, max_tokens=max_tokens, temperature=0, stream=True
    ):
        choice = chunk["choices"][0]
        finish = choice.get("finish_reason") or finish
        if choice["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
    # llama-cpp-python's stream carries no usage; a "length" finish means exactly max_tokens were produced
    if finish != "length":
        raise SystemExit(f"direct run stopped early ({finish}); pick a prompt that runs to max_tokens")
    tokens = max_tokens
    return first - started, (tokens - 1) / (last - first), tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7, help="measured repetitions per side (default 7)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--stream-interval-ms",
        type=float,
        default=20.0,
        help="the daemon's token coalescing interval (0 = one SSE chunk per token)",
    )
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.max_tokens = 2, 64
    report = Report("throughput", "Streamed generation through the daemon vs llama-cpp-python in-process")

    from llama_cpp import Llama
    from llama_cpp import __version__ as llama_version

    os.environ.setdefault("ZOE_STATE_DIR", str(REPO / ".state"))
    registry = load_registry(REPO / "models.yaml")
    entry = registry.models[registry.default_model]
    path = ensure_model_file(entry, REPO, Path(os.environ["ZOE_STATE_DIR"]))
    n_ctx, n_batch = 2048, 512

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        reg = write_registry(
            tmp,
            {
                "m": smollm_entry(
                    path,
                    n_ctx=n_ctx,
                    n_batch=n_batch,
                    n_threads=args.threads,
                    sampling={"temperature": 0.0, "repeat_penalty": 1.0},
                )
            },
        )
        daemon = start_daemon(reg, tmp, "--stream-interval-ms", str(args.stream_interval_ms))
        llm = Llama(
            str(path), n_ctx=n_ctx, n_batch=n_batch, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
        )
        client = httpx.Client()
        try:
            daemon_run(client, daemon.url, args.max_tokens)  # warm-up, discarded
            direct_run(llm, args.max_tokens)
            rows = []
            for rep in range(args.reps):
                d = daemon_run(client, daemon.url, args.max_tokens)
                p = direct_run(llm, args.max_tokens)
                rows.append((d, p))
                report.line(
                    f"rep {rep + 1}: daemon {d[1]:6.1f} tok/s ({d[2]} tokens, ttft {d[0] * 1000:5.0f} ms)   "
                    f"direct {p[1]:6.1f} tok/s (ttft {p[0] * 1000:5.0f} ms)"
                )
        finally:
            client.close()
            daemon.stop()

    d_med = statistics.median(r[0][1] for r in rows)
    p_med = statistics.median(r[1][1] for r in rows)
    ratios = [r[0][1] / r[1][1] for r in rows]
    report.line()
    report.line(
        f"model {path.name}, threads {args.threads}, n_ctx {n_ctx}, max_tokens {args.max_tokens}, "
        f"greedy, {args.reps} reps, stream interval {args.stream_interval_ms:g} ms; "
        f"llama-cpp-python {llama_version}; {platform.machine()}, {os.cpu_count()} cpus"
    )
    report.line(f"median generation: daemon {d_med:.1f} tok/s, direct {p_med:.1f} tok/s")
    met = report.target("generation tok/s daemon / direct", ">= 0.97", d_med / p_med, "ratio")
    report.line(
        f"ratio daemon/direct (median of medians): {d_med / p_med:.3f}  "
        f"(per-rep ratios {min(ratios):.3f}..{max(ratios):.3f}); target >= 0.97: "
        f"{report.verdict(met)}"
    )
    report.data = {
        "reps": args.reps,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "daemon_tok_s": [round(r[0][1], 2) for r in rows],
        "direct_tok_s": [round(r[1][1], 2) for r in rows],
        "daemon_ttft_ms": [round(r[0][0] * 1000, 1) for r in rows],
        "direct_ttft_ms": [round(r[1][0] * 1000, 1) for r in rows],
    }
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
