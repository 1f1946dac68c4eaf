"""Prefix reuse across interleaved requests (issue 11), on a real daemon with SmolLM2 at temperature 0.

A = the Home Assistant system prompt + user turn 1, B = an unrelated short chat, A' = the same
system prompt + user turn 2. Without the prefix cache B throws A's KV away and A' is evaluated in
full; with it, A' evaluates only the tokens after the prefix it shares with A.

The expected cached count is the exact common token prefix of A and A' as the worker itself
tokenises them: ``Engine.prompt_tokens`` (the chat template from the GGUF, then llama.cpp's
tokenizer) run in this process on the same file. Not timed: speed is measured by bench/prefix.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from zoe_edge.bench import ha
from zoe_edge.canonical import Finish, GenerationRequest, Message
from zoe_edge.worker.prefix import common_prefix

N_CTX = 4096
SYSTEM = ha.system_prompt()
A = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Turn on the kitchen ceiling light."}]
B = [{"role": "user", "content": "Write one sentence about the sea."}]
A2 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Is the garage door open?"}]


def worker_tokens(path: Path, messages: list[dict[str, str]]) -> list[int]:
    """The prompt tokens the worker evaluates for ``messages`` (its own code, same model file)."""
    from zoe_edge.worker.engine import Engine
    from zoe_edge.worker.protocol import LoadSpec

    engine = Engine(LoadSpec(name="m", path=str(path), n_ctx=N_CTX, n_batch=512, n_threads=1, n_gpu_layers=0))
    try:
        req = GenerationRequest(model="m", messages=[Message(role=m["role"], content=m["content"]) for m in messages])
        return engine.prompt_tokens(req)[0]
    finally:
        engine.close()


@pytest.fixture(scope="module")
def tokens(smollm_path: Path) -> dict[str, list[int]]:
    return {"A": worker_tokens(smollm_path, A), "A2": worker_tokens(smollm_path, A2)}


def chat(d: Daemon, messages: list[dict[str, str]]) -> tuple[str, Any]:
    client = openai.OpenAI(base_url=d.v1, api_key="unused", max_retries=0, timeout=300)
    r = client.chat.completions.create(model="m", messages=messages, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    return r.choices[0].message.content or "", r.usage


@pytest.fixture(scope="module")
def cached_daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("prefix")
    d = start_daemon(write_registry(tmp, {"m": smollm_entry(smollm_path, n_ctx=N_CTX)}), tmp)
    yield d
    d.stop()


def test_interleaved_request_reuses_the_ha_prefix_and_text_matches_uncached(
    cached_daemon: Daemon, smollm_path: Path, tmp_path: Path, tokens: dict[str, list[int]]
) -> None:
    shared = common_prefix(tokens["A"], tokens["A2"])
    # the shared prefix is the whole system prompt and then some, but not all of A' (the user turns differ)
    assert 1500 < shared < len(tokens["A2"])

    plan = cached_daemon.status()["slot"]["plan"]
    assert plan["prefix_cache_mb"] > 0, plan

    _, usage_a = chat(cached_daemon, A)
    assert usage_a.prompt_tokens == len(tokens["A"])
    assert usage_a.prompt_tokens_details.cached_tokens == 0

    _, usage_b = chat(cached_daemon, B)
    # B shares at most the chat template's opening tokens with A
    assert usage_b.prompt_tokens_details.cached_tokens < 16

    text_a2, usage_a2 = chat(cached_daemon, A2)
    assert usage_a2.prompt_tokens == len(tokens["A2"])
    assert usage_a2.prompt_tokens_details.cached_tokens == shared

    stats = cached_daemon.status()["slot"]["prefix_cache"]
    assert stats["restores"] == 1 and stats["saves"] == 1, stats
    assert 0 < stats["bytes_used"] <= stats["budget_bytes"]

    # the same A' on a fresh daemon whose prefix cache is turned off: nothing cached, same text
    reg = write_registry(tmp_path, {"m": smollm_entry(smollm_path, n_ctx=N_CTX, prefix_cache=0)})
    fresh = start_daemon(reg, tmp_path)
    try:
        assert fresh.status()["slot"]["plan"]["prefix_cache_mb"] == 0
        text_cold, usage_cold = chat(fresh, A2)
    finally:
        fresh.stop()
    assert usage_cold.prompt_tokens_details.cached_tokens == 0
    assert usage_cold.completion_tokens == usage_a2.completion_tokens
    assert text_a2 == text_cold and text_a2


def test_ollama_prompt_eval_count_counts_only_evaluated_tokens(
    cached_daemon: Daemon, tokens: dict[str, list[int]]
) -> None:
    """After A' ran and B came between, A' again is restored whole: one token is evaluated (for the logits)."""
    chat(cached_daemon, A2)
    chat(cached_daemon, B)
    body = {"model": "m", "messages": A2, "stream": False, "options": {"temperature": 0, "num_predict": 8}}
    r = httpx.post(cached_daemon.url + "/api/chat", json=body, timeout=300)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["prompt_eval_count"] == 1, reply
    stats = cached_daemon.status()["slot"]["prefix_cache"]
    assert stats["restores"] >= 2, stats


def test_eviction_never_drops_the_snapshot_being_restored(smollm_path: Path) -> None:
    """In the worker's engine with a budget of one snapshot: A, B, C (another long prompt), A', C'.

    At A' the live C would be saved while A is restored: with no room for both, C is not kept
    (A must survive). At C' nothing is restored and the live A' is saved by evicting A.
    """
    from zoe_edge.worker.engine import Engine
    from zoe_edge.worker.protocol import LoadSpec

    def req(messages: list[dict[str, str]]) -> GenerationRequest:
        return GenerationRequest(
            model="m",
            messages=[Message(role=m["role"], content=m["content"]) for m in messages],
            max_tokens=4,
            sampling={"temperature": 0.0},
        )

    def run(engine: Engine, messages: list[dict[str, str]]) -> int:
        finish = [e for e in engine.generate(req(messages), lambda: False) if isinstance(e, Finish)]
        return finish[0].usage.cached_tokens

    small = ha.system_prompt(20)  # ~600 tokens keeps this quick
    a = [{"role": "system", "content": small}, {"role": "user", "content": "Turn on the hall lamp."}]
    a2 = [{"role": "system", "content": small}, {"role": "user", "content": "Is the porch lock locked?"}]
    other = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))
    c = [{"role": "system", "content": other}, {"role": "user", "content": "Summarise."}]
    c2 = [{"role": "system", "content": other}, {"role": "user", "content": "Shorter."}]
    spec = LoadSpec(name="m", path=str(smollm_path), n_ctx=2048, n_batch=512, n_threads=2, n_gpu_layers=0)
    engine = Engine(spec.model_copy(update={"prefix_cache_bytes": 1 << 40}))
    try:
        cache = engine.prefix_cache
        run(engine, a)
        run(engine, B)
        assert cache.saves == 1
        cache.budget_bytes = cache.bytes_used + 1_000_000  # room for A's snapshot only
        run(engine, c)
        shared = common_prefix(engine.prompt_tokens(req(a))[0], engine.prompt_tokens(req(a2))[0])
        assert run(engine, a2) == shared
        assert cache.restores == 1 and cache.saves == 1 and cache.stats()["snapshots"] == 1
        run(engine, c2)  # C was not kept: evaluated from scratch, while A' is saved in A's place
        assert cache.saves == 2 and cache.evictions == 1 and cache.stats()["snapshots"] == 1
        assert cache.bytes_used <= cache.budget_bytes
    finally:
        engine.close()
