"""What the mid-prompt abort check costs: prompt processing with llama.cpp's abort callback armed vs not.

The worker arms a Python abort callback while a prompt is processed so that a client that gives
up frees the model at once; llama.cpp calls it between graph nodes. This measures time to first
token in-process on SmolLM2 with the callback armed and unarmed, alternating, in one run.

    .venv/bin/python bench/abort_cost.py [--reps 12] [--words 20] [--quick] [--json OUT]

No target is set (the issue asks for none); the ratio armed / unarmed is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import Report, add_arguments  # noqa: E402
from zoe_edge.canonical import GenerationRequest, Message, Sampling  # noqa: E402
from zoe_edge.registry import ensure_model_file, load_registry  # noqa: E402
from zoe_edge.worker.engine import Engine, LlamaLog  # noqa: E402
from zoe_edge.worker.protocol import LoadSpec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--words", type=int, default=20, help="prompt length: this many repetitions of a 5-word line")
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.reps = 3
    report = Report("abort_cost", "What the mid-prompt abort check costs")
    registry = load_registry(REPO / "models.yaml")
    state = Path(os.environ.get("ZOE_STATE_DIR") or REPO / ".state")
    path = ensure_model_file(registry.models["smollm2-135m"], REPO, state)
    threads = os.cpu_count() or 2
    engine = Engine(
        LoadSpec(name="m", path=str(path), n_ctx=2048, n_batch=512, n_threads=threads, n_gpu_layers=0), LlamaLog()
    )
    arm = engine._set_abort

    def ttft(i: int, armed: bool) -> float:
        # a different prompt each time, so no KV prefix is reused between measurements
        text = f"Write about topic number {i} " * args.words
        req = GenerationRequest(
            model="m", messages=[Message(role="user", content=text)], max_tokens=1, sampling=Sampling(temperature=0)
        )
        engine._set_abort = arm if armed else (lambda check: arm(None))  # type: ignore[method-assign]
        started = time.perf_counter()
        for _ in engine.generate(req, lambda: False):
            break
        return time.perf_counter() - started

    ttft(-1, True)  # warm-up
    armed, unarmed = [], []
    for i in range(args.reps):
        armed.append(ttft(2 * i, True))
        unarmed.append(ttft(2 * i + 1, False))
    a, u = statistics.median(armed), statistics.median(unarmed)
    report.line(f"prompt of ~{args.words * 6} tokens, {threads} threads, {args.reps} reps each, alternating")
    report.line(f"median time to first token: armed {a * 1000:.1f} ms, unarmed {u * 1000:.1f} ms, ratio {a / u:.3f}")
    report.data = {
        "reps": args.reps,
        "words": args.words,
        "threads": threads,
        "armed_ms": [round(x * 1000, 2) for x in armed],
        "unarmed_ms": [round(x * 1000, 2) for x in unarmed],
        "ratio": round(a / u, 4),
    }
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
