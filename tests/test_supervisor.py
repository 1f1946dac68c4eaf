"""The single slot with both real models: swaps, batching, admission, TTL, failures and the admin API."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.conftest import Daemon, copy_truncated, smollm_entry, start_daemon, write_registry

PROMPTS = {
    "smol": [{"role": "user", "content": "What is the capital of France?"}],
    "gemma": [{"role": "user", "content": "Name a fruit that is yellow."}],
}


def two_models(tmp: Path, model_files: dict[str, Path], **extra: Any) -> Path:
    gemma_copy = tmp / "gemma.gguf"
    if not gemma_copy.exists():
        shutil.copyfile(model_files["gemma3-270m"], gemma_copy)
    models = {
        "smol": smollm_entry(model_files["smollm2-135m"], ttl=extra.pop("smol_ttl", "10m")),
        "gemma": smollm_entry(gemma_copy, chat_format="gemma", ttl="10m"),
    }
    registry = write_registry(tmp, models, {"zoe-small": "gemma"})
    if extra:
        import yaml

        data = yaml.safe_load(registry.read_text())
        data.update(extra)
        registry.write_text(yaml.safe_dump(data))
    return registry


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]) -> Any:
    tmp = tmp_path_factory.mktemp("pair")
    d = start_daemon(two_models(tmp, model_files, admission={"min_residency": "60s", "max_queue": 64}), tmp)
    yield d
    d.stop()


def chat(d: Daemon, model: str, max_tokens: int = 16, **headers: str) -> httpx.Response:
    body = {"model": model, "messages": PROMPTS[model], "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(d.v1 + "/chat/completions", json=body, headers=headers, timeout=120)


async def test_interleaved_streams_batch_by_model_and_are_never_cut(pair: Daemon) -> None:
    # references first, one at a time: greedy decoding makes each model's answer fixed
    reference = {m: chat(pair, m).json() for m in ("smol", "gemma")}
    swaps_before = len(pair.status()["swaps"])
    client = openai.AsyncOpenAI(base_url=pair.v1, api_key="x", max_retries=0, timeout=120)

    async def stream(model: str, delay: float) -> tuple[str, str, str | None, int]:
        await asyncio.sleep(delay)
        text, finish, usage = "", None, 0
        s = await client.chat.completions.create(
            model=model,
            messages=PROMPTS[model],
            max_tokens=16,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
        async for chunk in s:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return model, text, finish, usage

    order = ["smol", "gemma"] * 6  # 12 requests, 11 alternations
    results = await asyncio.gather(*(stream(m, i * 0.05) for i, m in enumerate(order)))
    for model, text, finish, usage in results:
        ref = reference[model]
        assert text == ref["choices"][0]["message"]["content"], f"{model} output differs: {text!r}"
        assert finish == ref["choices"][0]["finish_reason"]
        assert usage == ref["usage"]["completion_tokens"]
    status = pair.status()
    swaps = status["swaps"][swaps_before:]
    assert 1 <= len(swaps) <= 3, swaps  # far below the 11 alternations
    for swap in swaps:
        assert swap["duration_ms"] > 0 and swap["to"] in ("smol", "gemma") and swap["reason"]
    assert status["queue"]["length"] == 0


def test_busy_model_rejects_with_retry_after_when_the_wait_exceeds_the_deadline(pair: Daemon) -> None:
    chat(pair, "smol")  # loaded and measured
    long = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 400,
        "temperature": 0.7,
        "stream": True,
    }
    started = threading.Event()

    def hold() -> None:
        with httpx.stream("POST", pair.v1 + "/chat/completions", json=long, timeout=120) as r:
            for _ in r.iter_lines():
                started.set()

    t = threading.Thread(target=hold)
    t.start()
    assert started.wait(30)
    r = chat(pair, "smol", **{"X-Zoe-Deadline": "0.01"})
    t.join()
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "busy" and "deadline" in err["message"]
    assert float(r.headers["Retry-After"]) >= 1
    assert chat(pair, "smol").status_code == 200  # and the next one is served


def test_admin_status_load_and_unload(pair: Daemon) -> None:
    r = httpx.post(pair.url + "/admin/models/zoe-small/load", timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["loaded"] == "gemma" and r.json()["plan"]["fits"] is True
    status = pair.status()
    assert status["slot"]["model"] == "gemma" and status["slot"]["state"] == "ready"
    assert status["slot"]["plan"]["kv_mb"] > 0 and status["profile"]["kind"] in ("cpu", "jetson", "discrete-gpu")
    pid = status["slot"]["pid"]
    r = httpx.post(pair.url + "/admin/models/gemma/unload", timeout=60)
    assert r.json()["unloaded"] == "gemma"
    assert pair.status()["slot"]["state"] == "unloaded"
    assert not psutil.pid_exists(pid)
    # only registry names: a path is just an unknown name
    r = httpx.post(pair.url + "/admin/models/%2Fetc%2Fpasswd/load")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_queue_full_is_503(tmp_path: Path, model_files: dict[str, Path]) -> None:
    d = start_daemon(two_models(tmp_path, model_files, admission={"max_queue": 1}), tmp_path)
    try:
        long = {
            "model": "smol",
            "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 300,
            "temperature": 0.7,
        }
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(httpx.post(d.v1 + "/chat/completions", json=long, timeout=120))
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
            time.sleep(0.3)
        r = chat(d, "smol")
        for t in threads:
            t.join()
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full", r.text
        assert "Retry-After" in r.headers
        assert [x.status_code for x in results] == [200, 200]
    finally:
        d.stop()


def test_model_that_does_not_fit_is_refused_with_the_plans_reason(tmp_path: Path, model_files: dict[str, Path]) -> None:
    # a simulated Orin Nano with most of its memory reserved: SmolLM2 (~0.5 GB) fits, Gemma (~1 GB) does not
    registry = two_models(tmp_path, model_files, device={"profile": "orin-nano-8gb", "reserve_mb": 5900})
    d = start_daemon(registry, tmp_path)
    try:
        r = httpx.post(d.url + "/admin/models/gemma/load", timeout=60)
        assert r.status_code == 503
        err = r.json()["error"]
        assert (
            err["code"] == "model_too_large" and "does not fit" in err["message"] and "orin-nano-8gb" in err["message"]
        )
        r = chat(d, "gemma")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_too_large"
        assert chat(d, "smol").status_code == 200
        assert d.status()["slot"]["plan"]["gpu_layers"] == 31  # unified memory: every layer offloaded
    finally:
        d.stop()


def test_broken_file_fails_clearly_and_recovers_once_fixed(tmp_path: Path, model_files: dict[str, Path]) -> None:
    registry = two_models(tmp_path, model_files)
    gemma = tmp_path / "gemma.gguf"
    d = start_daemon(registry, tmp_path)
    try:
        for breakage, words in (("truncate", "truncated"), ("delete", "does not exist")):
            if breakage == "truncate":
                copy_truncated(model_files["gemma3-270m"], gemma, 0.6)
            else:
                gemma.unlink()
            r = chat(d, "gemma")
            assert r.status_code == 503, r.text
            assert words in r.json()["error"]["message"]
            failure = d.status()["failures"]["gemma"]
            assert words in failure["reason"] and failure["retry_in_s"] > 0
            assert chat(d, "smol").status_code == 200  # the other model keeps serving
            # still broken: the backoff answers at once without touching the file again
            started = time.monotonic()
            assert chat(d, "gemma").status_code == 503
            assert time.monotonic() - started < 1.0
        shutil.copyfile(model_files["gemma3-270m"], gemma)  # fixed: a new file resets the backoff
        r = chat(d, "gemma")
        assert r.status_code == 200, r.text
        assert "gemma" not in d.status()["failures"]
    finally:
        d.stop()


def test_idle_ttl_unloads_and_returns_the_memory(tmp_path: Path, model_files: dict[str, Path]) -> None:
    registry = two_models(tmp_path, model_files, smol_ttl="2s", preload="none")
    d = start_daemon(registry, tmp_path, wait_ready=False)
    try:
        time.sleep(1.0)
        baseline = psutil.Process(d.proc.pid).memory_info().rss
        assert chat(d, "smol").status_code == 200
        status = d.status()
        pid, rss = status["slot"]["pid"], status["slot"]["worker_rss_mb"]
        assert status["slot"]["state"] == "ready" and rss > 50  # the weights live in the worker
        deadline = time.monotonic() + 10
        while d.status()["slot"]["state"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.status()["slot"]["state"] == "unloaded"
        assert not psutil.pid_exists(pid)  # the worker, and its memory, are gone
        grown = psutil.Process(d.proc.pid).memory_info().rss - baseline
        assert grown < 30 * 2**20, f"daemon grew by {grown / 2**20:.0f} MB"
        assert "ttl" in d.log()
    finally:
        d.stop()


def test_quantised_kv_cache_loads_and_plans_smaller(tmp_path: Path, model_files: dict[str, Path]) -> None:
    registry = write_registry(
        tmp_path,
        {
            "f16": smollm_entry(model_files["smollm2-135m"]),
            "q8": smollm_entry(model_files["smollm2-135m"], kv_cache_type="q8_0"),
        },
    )
    d = start_daemon(registry, tmp_path)
    try:
        f16_kv = d.status()["slot"]["plan"]["kv_mb"]
        body = {"model": "q8", "messages": PROMPTS["smol"], "max_tokens": 8, "temperature": 0}
        r = httpx.post(d.v1 + "/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        q8_kv = d.status()["slot"]["plan"]["kv_mb"]
        assert q8_kv == pytest.approx(f16_kv * 34 / 64, rel=0.01)  # 34 bytes per 32 values vs 2 bytes each
    finally:
        d.stop()


def test_memory_pressure_unloads_the_idle_model(tmp_path: Path, model_files: dict[str, Path]) -> None:
    """Another program takes memory: the idle model gives its own back, and reloading is refused."""
    from zoe_edge.supervisor.device import read_meminfo

    available_mb = read_meminfo()["MemAvailable"] // 2**20
    # leave 1 GB above the reserve: SmolLM2's plan (~0.5 GB) fits, a 2 GB allocation will not
    registry = two_models(tmp_path, model_files, device={"reserve_mb": available_mb - 1000})
    d = start_daemon(registry, tmp_path)
    try:
        assert d.status()["slot"]["model"] == "smol"
        hog = bytearray(2 * 2**30)
        for i in range(0, len(hog), 4096):  # touch every page so the memory is really taken
            hog[i] = 1
        deadline = time.monotonic() + 20
        while d.status()["slot"]["state"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.2)
        status = d.status()
        assert status["slot"]["state"] == "unloaded"
        assert "memory pressure" in (status["last_error"] or "")
        r = chat(d, "smol")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_too_large"
        del hog
    finally:
        d.stop()


async def test_close_returns_after_requests_every_time(tmp_path: Path, smollm_path: Path) -> None:
    """close() used to hang on Python 3.11: the scheduler loop could miss its cancellation and run on."""
    from tests.conftest import state_dir
    from zoe_edge.canonical import GenerationRequest, Message
    from zoe_edge.config import Settings
    from zoe_edge.registry import load_registry
    from zoe_edge.supervisor import Supervisor

    registry = load_registry(write_registry(tmp_path, {"smol": smollm_entry(smollm_path)}))
    for _ in range(3):
        sup = Supervisor(registry, tmp_path, Settings(state_dir=state_dir()))
        await sup.start()
        for _ in range(2):
            req = GenerationRequest(model="smol", messages=[Message(role="user", content="hi")], max_tokens=2)
            events = [event async for event in sup.generate("smol", req, None)]
            assert events, "no events"
        await asyncio.wait_for(sup.close(), 20)
        assert sup.status()["slot"]["pid"] is None
