"""Client side of the benchmarks: one streamed chat completion, timed at the client.

Works against any OpenAI-compatible server (zoe-edge, ``llama_cpp.server``), so the same
measurement is taken on both sides of a comparison.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from zoe_edge.bench import ha


@dataclass
class Streamed:
    ttft_s: float  # request sent -> first content chunk
    total_s: float
    text: str
    completion_tokens: int | None  # from the usage chunk, when the server sends one
    cached_tokens: int | None
    first_s: float  # client clock of the first and last content chunks
    last_s: float
    chunks: int
    finish_reason: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Generation speed after the first token: (tokens - 1) / (last - first)."""
        n = self.completion_tokens
        if not n or n < 2 or self.last_s <= self.first_s:
            return None
        return (n - 1) / (self.last_s - self.first_s)


def stream_chat(
    client: httpx.Client,
    base: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    model: str = "m",
    extra: dict[str, Any] | None = None,
) -> Streamed:
    """POST ``{base}/v1/chat/completions`` streamed at temperature 0; raises on a non-2xx answer."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }
    started = time.perf_counter()
    first = last = 0.0
    text: list[str] = []
    completion = cached = None
    chunks = 0
    finish = None
    with client.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code // 100 != 2:
            r.read()
            raise SystemExit(f"{base} answered {r.status_code}: {r.text[:500]}")
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage")
            if usage:
                completion = usage.get("completion_tokens")
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            choices = chunk.get("choices") or []
            finish = (choices[0].get("finish_reason") if choices else None) or finish
            content = choices[0].get("delta", {}).get("content") if choices else None
            if content:
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
                text.append(content)
    ended = time.perf_counter()
    first = first or ended
    return Streamed(
        first - started, ended - started, "".join(text), completion, cached, first, last or first, chunks, finish
    )


def ha_messages(turn: str, n_entities: int = 70) -> list[dict[str, str]]:
    """A Home Assistant voice turn: the ~2k-token Assist system prompt, then ``turn``."""
    return [{"role": "system", "content": ha.system_prompt(n_entities)}, {"role": "user", "content": turn}]


OTHER_PROMPTS = [
    "Write two sentences about the history of bread.",
    "Suggest a name for a grey cat.",
    "What is a good breakfast before a long walk?",
    "Explain in one sentence what a barometer measures.",
]


TOKENS_PER_ITEM = 6.4  # SmolLM2's tokens for one "item 123," of long_prompt


def long_prompt(first_word: str, items: int) -> str:
    """A raw prompt of about ``TOKENS_PER_ITEM x items`` tokens; the first word keeps it from sharing a KV prefix."""
    return first_word + ": " + " ".join(f"item {i}," for i in range(items))
