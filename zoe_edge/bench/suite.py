"""What every bench suite shares: greedy settings, one generation timed from the client side, a suite's result."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zoe_edge.bench.scoring import Estimate
from zoe_edge.canonical import ErrorEvent, Finish, GenerationRequest, Message, Sampling, TextDelta, ToolCall
from zoe_edge.gguf_info import GGUFError, read_gguf
from zoe_edge.supervisor import Supervisor
from zoe_edge.supervisor.slot import default_threads

SEED = 1234
GREEDY = Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=SEED)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Answer:
    """What one generation produced, with the client-side wall-clock timings."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    finish: Finish | None = None
    error: str | None = None
    ttft_s: float | None = None  # request sent -> first event carrying output
    total_s: float = 0.0


@dataclass
class SuiteResult:
    model: str
    suite: str
    scores: dict[str, Estimate]
    settings: dict[str, Any]
    at: str
    cases: list[dict[str, Any]] = field(default_factory=list)  # per-case rows for the report


Progress = Callable[[str, str, int, int], None]  # model, suite, done, total


async def ask(sup: Supervisor, model: str, req: GenerationRequest) -> Answer:
    out = Answer()
    started = time.perf_counter()
    async with contextlib.aclosing(sup.generate(model, req)) as events:
        async for event in events:
            if isinstance(event, TextDelta | ToolCall) and out.ttft_s is None:
                out.ttft_s = time.perf_counter() - started
            if isinstance(event, TextDelta):
                out.text += event.text
            elif isinstance(event, ToolCall):
                out.calls.append(event)
            elif isinstance(event, Finish):
                out.finish = event
            elif isinstance(event, ErrorEvent):
                out.error = event.message
    out.total_s = time.perf_counter() - started
    return out


def _request(model: str, messages: list[Message], max_tokens: int, **extra: Any) -> GenerationRequest:
    return GenerationRequest(model=model, messages=messages, max_tokens=max_tokens, sampling=GREEDY, **extra)


def run_settings(sup: Supervisor, model: str, quick: bool) -> dict[str, Any]:
    """The conditions a score was measured under, stored beside it."""
    entry = sup.registry.models[model]
    try:
        quant = read_gguf(sup.model_file(model)).file_type
    except (GGUFError, OSError, ValueError):
        quant = "unknown"
    try:
        build = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        build = "unknown"
    plan = sup.plan
    return {
        "llama_cpp": build,
        "threads": entry.n_threads or default_threads(),
        "n_ctx": entry.n_ctx,
        "n_batch": min(entry.n_batch, entry.n_ctx),
        "gpu_layers": plan.gpu_layers if plan is not None and sup.model == model else entry.gpu_layers,
        "quantisation": quant,
        "profile": sup.profile.name,
        "seed": SEED,
        "temperature": 0.0,
        "quick": quick,
    }
