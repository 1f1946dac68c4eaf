"""Ollama's ``options.num_ctx`` honoured within the memory plan, with the real SmolLM2 (trained context 8192).

Home Assistant sends ``num_ctx: 8192.0`` on every ``/api/chat``; the registry's ``n_ctx`` is the floor,
a larger request reloads the model at the larger context (reported like a swap), a smaller one never
shrinks it, and the response says what it got in ``x-zoe-context`` / ``x-zoe-context-reason``. The pure
decision is tested in tests/unit/test_planner.py (memory limits, the rate limit).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from zoe_edge.api.ollama import ChatRequest, GenerateRequest

# about 5000 tokens: SmolLM2's tokenizer makes one token of each " hello"
LONG = "Repeat after me:" + " hello" * 5000


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("ctx")
    # a 5000-token prefill on a busy 2-core runner can outlast the default 120 s stall timeout
    registry = write_registry(tmp, {"smol": smollm_entry(smollm_path, n_ctx=2048)})
    d = start_daemon(registry, tmp, "--stall-timeout", "600")
    yield d
    d.stop()


def ask(d: Daemon, content: str = "Say hi.", num_ctx: float | None = None) -> httpx.Response:
    options: dict[str, Any] = {"num_predict": 4, "temperature": 0}
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    body = {"model": "smol", "messages": [{"role": "user", "content": content}], "stream": False, "options": options}
    return httpx.post(d.url + "/api/chat", json=body, timeout=300)


def test_num_ctx_from_ollama_reaches_the_canonical_request() -> None:
    chat = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "options": {"num_ctx": 8192.0}}
    )
    assert chat.to_canonical().n_ctx == 8192
    generate = GenerateRequest.model_validate({"model": "m", "prompt": "x", "options": {"num_ctx": 4096}})
    assert generate.to_canonical().n_ctx == 4096
    assert ChatRequest.model_validate({"model": "m", "options": {"num_ctx": 0}}).to_canonical().n_ctx is None
    assert ChatRequest.model_validate({"model": "m"}).to_canonical().n_ctx is None


def test_num_ctx_grows_the_context_never_shrinks_it_and_is_capped_at_training(smol: Daemon) -> None:
    # at the registry's 2048 a 5000-token prompt is refused with a clear error, never cut
    r = ask(smol, LONG)
    assert r.status_code == 400, r.text
    assert "context is 2048" in r.json()["error"]
    swaps = len(smol.status()["swaps"])

    # Home Assistant's float num_ctx: the model is reloaded at 8192, reported like a swap
    r = ask(smol, num_ctx=8192.0)
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-context"] == "8192"
    assert r.headers["x-zoe-context-reason"] == "num_ctx 8192: reloaded at 8192"
    status = smol.status()
    slot = status["slot"]
    assert slot["n_ctx"] == 8192 and slot["info"]["n_ctx"] == 8192 and slot["info"]["n_ctx_train"] == 8192
    assert slot["context"]["n_ctx"] == 8192 and slot["context"]["reload"] is True and slot["context"]["model"] == "smol"
    # Ollama's /api/ps says the context it runs at now, as Ollama does after a num_ctx load
    assert httpx.get(smol.url + "/api/ps", timeout=10).json()["models"][0]["context_length"] == 8192
    assert len(status["swaps"]) == swaps + 1
    resize = status["swaps"][-1]
    assert resize["from"] == resize["to"] == "smol" and resize["resize"] is True and resize["n_ctx"] == 8192
    assert resize["reason"] == "context 2048 -> 8192 (num_ctx 8192: reloaded at 8192)"
    assert "context for 'smol': num_ctx 8192: reloaded at 8192" in smol.log()

    # a smaller request does not shrink it
    r = ask(smol, num_ctx=2048)
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-context"] == "8192"
    assert r.headers["x-zoe-context-reason"] == "num_ctx 2048 <= loaded at 8192: served at 8192"

    # beyond the trained context: the trained context, and the reason says so
    r = ask(smol, num_ctx=32768)
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-context"] == "8192"
    assert r.headers["x-zoe-context-reason"] == (
        "num_ctx 32768 capped at the model's trained context 8192: loaded at 8192"
    )
    assert smol.status()["slot"]["context"]["requested"] == 32768

    r = ask(smol)
    assert r.headers["x-zoe-context"] == "8192"
    assert r.headers["x-zoe-context-reason"] == "no num_ctx asked: loaded at 8192"
    assert len(smol.status()["swaps"]) == swaps + 1  # one resize in all


def test_a_5000_token_prompt_with_num_ctx_8192_is_answered(smol: Daemon) -> None:
    """What Home Assistant's long prompts need: refused at the registry's 2048 (never cut), answered at 8192."""
    if smol.status()["slot"]["n_ctx"] == 2048:
        r = ask(smol, LONG)
        assert r.status_code == 400 and "context is 2048" in r.json()["error"], r.text
    # streaming: the headers come with the stream
    with httpx.stream(
        "POST",
        smol.url + "/api/chat",
        json={
            "model": "smol",
            "messages": [{"role": "user", "content": LONG}],
            "options": {"num_ctx": 8192.0, "num_predict": 4, "temperature": 0},
        },
        timeout=600,
    ) as s:
        assert s.status_code == 200, s.read()
        assert s.headers["x-zoe-context"] == "8192"
        lines = [json.loads(line) for line in s.iter_lines() if line]
    assert "error" not in lines[-1], lines[-1]
    assert lines[-1]["done"] is True and lines[-1]["prompt_eval_count"] > 4096


def test_too_little_memory_gets_the_largest_context_that_fits(tmp_path: Path, smollm_path: Path) -> None:
    # a simulated Orin Nano with (7620 - 1100 - 5977) = 543 MiB usable: SmolLM2 fits at 2048 (439 MiB)
    # but not at 8192 (622 MiB); the largest multiple of 256 that fits is 6144 (see the planner tests)
    registry = write_registry(tmp_path, {"smol": smollm_entry(smollm_path, n_ctx=2048)})
    text = registry.read_text() + "device:\n  profile: orin-nano-8gb\n  reserve_mb: 5977\n"
    registry.write_text(text)
    d = start_daemon(registry, tmp_path)
    try:
        r = ask(d, num_ctx=8192.0)
        assert r.status_code == 200, r.text
        assert r.headers["x-zoe-context"] == "6144"
        reason = r.headers["x-zoe-context-reason"]
        assert reason.startswith("num_ctx 8192: 8192 does not fit: needs 622 MB, 543 MB available on orin-nano-8gb")
        assert reason.endswith("; reloaded at 6144, the largest that fits")
        assert d.status()["slot"]["n_ctx"] == 6144
    finally:
        d.stop()
