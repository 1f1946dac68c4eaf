"""Prompts that survive a swap: prefix snapshots on disk, on a real daemon with SmolLM2 at temperature 0.

Two registry entries point at the same GGUF with different n_ctx, so asking for the other one is a
real swap (the first worker ends, a second loads). A = the Home Assistant system prompt + turn 1
on ``m``; B = a short chat on ``m2`` (the swap away); A' = the same system prompt + turn 2 on ``m``
(the swap back). With persistence the worker that served A left its KV state on disk and the new
``m`` worker restores it: A' evaluates only what follows the shared prefix. Without it A' is cold.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from zoe_edge.bench import ha
from zoe_edge.canonical import GenerationRequest, Message
from zoe_edge.worker import snapshots
from zoe_edge.worker.prefix import common_prefix

N_CTX = 4096
SYSTEM = ha.system_prompt(20)  # ~600 tokens: long (>= 256, so it is kept) and quick on two cores
A = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Turn on the kitchen ceiling light."}]
B = [{"role": "user", "content": "Write one sentence about the sea."}]
A2 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Is the garage door open?"}]


@pytest.fixture(scope="module")
def shared(smollm_path: Path) -> int:
    """The exact token prefix A and A' share, as the worker's own code tokenises them."""
    from zoe_edge.worker.engine import Engine
    from zoe_edge.worker.protocol import LoadSpec

    engine = Engine(LoadSpec(name="m", path=str(smollm_path), n_ctx=N_CTX, n_batch=512, n_threads=1, n_gpu_layers=0))
    try:
        toks = [
            engine.prompt_tokens(GenerationRequest(model="m", messages=[Message(**m) for m in msgs]))[0]
            for msgs in (A, A2)
        ]
    finally:
        engine.close()
    return common_prefix(toks[0], toks[1])


def chat(d: Daemon, model: str, messages: list[dict[str, str]]) -> tuple[str, Any]:
    client = openai.OpenAI(base_url=d.v1, api_key="unused", max_retries=0, timeout=300)
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    return r.choices[0].message.content or "", r.usage


def two_model_daemon(tmp: Path, smollm_path: Path, prefix_dir: Path, persist: bool, **env: str) -> Daemon:
    registry = write_registry(
        tmp, {"m": smollm_entry(smollm_path, n_ctx=N_CTX), "m2": smollm_entry(smollm_path, n_ctx=2048)}
    )
    data = yaml.safe_load(registry.read_text())
    data["admission"] = {"min_residency": "0s"}  # swap as soon as the other model is asked for
    registry.write_text(yaml.safe_dump(data))
    full_env = {"ZOE_PREFIX_PERSIST": "1" if persist else "0", "ZOE_PREFIX_DIR": str(prefix_dir), **env}
    return start_daemon(registry, tmp, env=full_env)


def snapshot_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + snapshots.SUFFIX))


def plant_bad_files(directory: Path, good: Path) -> list[Path]:
    """A truncated copy, random bytes, and a header from another model, all under this model's key."""
    digest = good.name.split("-")[0]
    raw = good.read_bytes()
    (length,) = struct.unpack(">I", raw[len(snapshots.MAGIC) : len(snapshots.MAGIC) + 4])
    start = len(snapshots.MAGIC) + 4
    header = json.loads(raw[start : start + length])
    header["key"]["model_path"] = "/models/some-other-model.gguf"
    forged = json.dumps(header).encode()
    contents = {
        "truncated": raw[: len(raw) // 2],
        "random": os.urandom(64 * 1024),
        "foreign": snapshots.MAGIC + struct.pack(">I", len(forged)) + forged + raw[start + length :],
    }
    planted = []
    for name, content in contents.items():
        path = directory / f"{digest}-{name:0>16}{snapshots.SUFFIX}"
        path.write_bytes(content)
        planted.append(path)
    return planted


@pytest.fixture(scope="module")
def cold_answer(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[tuple[str, Any]]:
    """A' after the swap back with persistence off: evaluated from scratch."""
    tmp = tmp_path_factory.mktemp("persist-off")
    d = two_model_daemon(tmp, smollm_path, tmp / "prefix", persist=False)
    try:
        chat(d, "m", A)
        chat(d, "m2", B)
        answer = chat(d, "m", A2)
    finally:
        d.stop()
    assert snapshot_files(tmp / "prefix") == []  # off means nothing written
    yield answer


# two daemons, four swaps and three long prompts evaluated cold: minutes on a busy two-core machine
@pytest.mark.timeout(900)
def test_a_long_prompt_survives_a_swap_and_the_answer_is_unchanged(
    tmp_path: Path, smollm_path: Path, shared: int, cold_answer: tuple[str, Any]
) -> None:
    prefix_dir = tmp_path / "prefix"
    # one file allowed: the exit after A' must evict A's snapshot to keep A''s, and stay within bounds
    d = two_model_daemon(tmp_path, smollm_path, prefix_dir, persist=True, ZOE_PREFIX_DISK_FILES="1")
    try:
        _, usage_a = chat(d, "m", A)
        assert usage_a.prompt_tokens_details.cached_tokens == 0
        chat(d, "m2", B)  # the swap away: the worker that served A ends and writes its KV state
        [good] = snapshot_files(prefix_dir)
        bad = plant_bad_files(prefix_dir, good)

        text, usage = chat(d, "m", A2)  # the swap back: a new worker, restored from disk
        stats = d.status()["slot"]["prefix_cache"]
    finally:
        d.stop()
    assert usage.prompt_tokens_details.cached_tokens == shared, usage
    assert stats["disk_restores"] == 1 and stats["restores"] == 1, stats
    assert stats["disk_discarded"] == len(bad), stats
    assert not any(p.exists() for p in bad)  # ignored and deleted, and the worker served on

    cold_text, cold_usage = cold_answer
    assert cold_usage.prompt_tokens_details.cached_tokens == 0
    assert text == cold_text and text
    assert usage.completion_tokens == cold_usage.completion_tokens

    # the daemon's own exit wrote A' (the live KV) and, held to one file, dropped A's older one
    files = snapshot_files(prefix_dir)
    assert len(files) == 1 and files[0] != good, files
    assert not list(prefix_dir.glob(".*.tmp"))
