"""Routes and cloud fallback end to end: a real daemon, real SmolLM2, loopback cloud fakes, the openai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.common import FakeReply, FakeToolCall
from tests.fakes.openai_fake import OpenAIFake

KEY_ENV = {"ZOE_TEST_CLOUD_KEY": "sk-test-not-a-real-key"}
HI = [{"role": "user", "content": "Say hi."}]


def registry_with(tmp: Path, smol: Path, cloud_url: str, claude_url: str, **extra: Any) -> Path:
    path = write_registry(
        tmp,
        {"smol": smollm_entry(smol), "ghost": smollm_entry(tmp / "missing.gguf")},
        {"zoe-chat": "smol"},
        default="smol",
    )
    data = yaml.safe_load(path.read_text())
    data["providers"] = {
        "cloud": {
            "type": "openai",
            "base_url": cloud_url,
            "api_key_env": "ZOE_TEST_CLOUD_KEY",
            "retries": 2,
            "backoff": 0.05,
            "cooldown_after": 50,
        },
        "claude": {
            "type": "anthropic",
            "base_url": claude_url,
            "api_key_env": "ZOE_TEST_CLOUD_KEY",
            "retries": 1,
            "backoff": 0.05,
        },
        "nokey": {"type": "openai", "base_url": cloud_url, "api_key_env": "ZOE_TEST_UNSET_KEY"},
    }
    data["routes"] = {
        "fast": {"targets": ["smol", "cloud:gpt-fake"], "deadline": "0.2s"},
        "cloud-only": {"targets": ["cloud:gpt-fake"]},
        "ghostly": {"targets": ["ghost", "cloud:gpt-fake"]},
        "claude-route": {"targets": ["claude:claude-fake"]},
        "local-only": {"targets": ["smol"], "deadline": "0.2s"},
        "keyless-first": {"targets": ["nokey:gpt-fake", "smol"]},
        "fast-then-down": {"targets": ["smol", "cloud:gpt-fake"], "deadline": "0.2s"},
    }
    data["auto"] = {
        "default": "zoe-chat",
        "rules": [{"route": "cloud-only", "reason": "device command", "pattern": r"^\W*turn\b"}],
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture()
async def fakes() -> AsyncIterator[tuple[OpenAIFake, AnthropicFake]]:
    cloud, claude = OpenAIFake(), AnthropicFake()
    await cloud.start()
    await claude.start()
    cloud.default = FakeReply(text="Hello from the cloud.")
    yield cloud, claude
    await cloud.close()
    await claude.close()


@pytest.fixture()
def daemon(tmp_path: Path, smollm_path: Path, fakes: tuple[OpenAIFake, AnthropicFake]) -> Iterator[Daemon]:
    cloud, claude = fakes
    d = start_daemon(registry_with(tmp_path, smollm_path, cloud.url, claude.root), tmp_path, env=KEY_ENV)
    yield d
    d.stop()


async def post(d: Daemon, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as client:
        return await client.post(d.v1 + "/chat/completions", json=body)


async def hold_local(d: Daemon) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A long local generation in flight; returns once its first token has arrived."""
    started = asyncio.Event()

    async def run() -> None:
        body = {
            "model": "smol",
            "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 300,
            "temperature": 0.8,
            "stream": True,
        }
        async with (
            httpx.AsyncClient(timeout=120) as client,
            client.stream("POST", d.v1 + "/chat/completions", json=body) as r,
        ):
            async for _ in r.aiter_lines():
                started.set()

    task = asyncio.create_task(run())
    await asyncio.wait_for(started.wait(), 60)
    return task, started


async def release(task: asyncio.Task[None]) -> None:
    """End the long local generation: the slot frees as soon as its client goes away."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_busy_local_falls_back_to_cloud_with_reason(daemon: Daemon, fakes: Any) -> None:
    cloud, _ = fakes
    task, _ = await hold_local(daemon)
    r = await post(daemon, {"model": "fast", "messages": HI})
    await release(task)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the cloud."
    assert r.headers["x-zoe-served-by"] == "cloud:gpt-fake"
    assert "local model busy" in r.headers["x-zoe-fallback-reason"]
    assert r.headers["x-zoe-route"] == "fast (route)"
    sent = cloud.bodies[-1]
    assert sent["model"] == "gpt-fake" and sent["messages"][-1]["content"] == "Say hi."
    assert cloud.requests[-1].headers.get("Authorization") == "Bearer sk-test-not-a-real-key"
    assert "sk-test-not-a-real-key" not in daemon.log()


async def test_idle_local_serves_without_fallback(daemon: Daemon, fakes: Any) -> None:
    cloud, _ = fakes
    r = await post(daemon, {"model": "fast", "messages": HI, "max_tokens": 5})
    assert r.status_code == 200
    assert r.headers["x-zoe-served-by"] == "local:smol"
    assert "x-zoe-fallback-reason" not in r.headers
    assert cloud.requests == []


async def test_missing_model_falls_back(daemon: Daemon) -> None:
    r = await post(daemon, {"model": "ghostly", "messages": HI})
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-served-by"] == "cloud:gpt-fake"
    assert "does not exist" in r.headers["x-zoe-fallback-reason"]


async def test_model_that_does_not_fit_falls_back(tmp_path: Path, smollm_path: Path, fakes: Any) -> None:
    cloud, claude = fakes
    registry = registry_with(
        tmp_path,
        smollm_path,
        cloud.url,
        claude.root,
        device={"profile": "orin-nano-8gb", "reserve_mb": 6500},
        preload="none",
    )
    d = start_daemon(registry, tmp_path, env=KEY_ENV, wait_ready=False)
    try:
        r = await post(d, {"model": "fast", "messages": HI})
        assert r.status_code == 200, r.text
        assert r.headers["x-zoe-served-by"] == "cloud:gpt-fake"
        assert "model does not fit" in r.headers["x-zoe-fallback-reason"]
    finally:
        d.stop()


async def test_cloud_500_then_200_is_retried(daemon: Daemon, fakes: Any) -> None:
    cloud, _ = fakes
    cloud.fail(1, 500)
    r = await post(daemon, {"model": "cloud-only", "messages": HI})
    assert r.status_code == 200, r.text
    assert len(cloud.requests) == 2


async def test_cloud_down_and_local_busy_is_503_listing_every_target(daemon: Daemon, fakes: Any) -> None:
    cloud, _ = fakes
    cloud.fail(20, 503, retry_after="7")
    task, _ = await hold_local(daemon)
    r = await post(daemon, {"model": "fast-then-down", "messages": HI})
    await release(task)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "no_target_available"
    assert "local:smol: local model busy" in err["message"] and "cloud:gpt-fake" in err["message"]
    assert int(r.headers["Retry-After"]) >= 1


async def test_local_only_route_busy_is_503_with_retry_after(daemon: Daemon) -> None:
    task, _ = await hold_local(daemon)
    r = await post(daemon, {"model": "local-only", "messages": HI})
    await release(task)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "busy"
    assert "the local model is busy" in r.json()["error"]["message"]
    assert "Retry-After" in r.headers


async def test_disabled_provider_is_skipped_not_an_error(daemon: Daemon) -> None:
    r = await post(daemon, {"model": "keyless-first", "messages": HI, "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-served-by"] == "local:smol"
    assert "ZOE_TEST_UNSET_KEY" in r.headers["x-zoe-fallback-reason"]


async def test_worker_killed_before_first_token_falls_back_transparently(daemon: Daemon) -> None:
    pid = daemon.worker_pid()
    body = {"model": "ghostly", "messages": HI}  # warm the cloud path once
    assert (await post(daemon, body)).status_code == 200
    long = {"model": "fast", "messages": [{"role": "user", "content": "lorem ipsum " * 300}], "max_tokens": 5}
    threading.Timer(0.15, os.kill, (pid, signal.SIGKILL)).start()
    r = await post(daemon, long)
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-served-by"] == "cloud:gpt-fake"
    assert "worker crashed" in r.headers["x-zoe-fallback-reason"]


async def test_worker_killed_mid_stream_ends_with_an_error_and_no_splice(daemon: Daemon) -> None:
    client = openai.AsyncOpenAI(base_url=daemon.v1, api_key="x", max_retries=0, timeout=60)
    pid = daemon.worker_pid()
    text = ""
    with pytest.raises(openai.APIError):
        stream = await client.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "Write a long story."}],  # type: ignore[list-item]
            max_tokens=500,
            temperature=0.8,
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                if len(text) > 20:
                    os.kill(pid, signal.SIGKILL)
    assert "cloud" not in text


async def test_anthropic_stream_with_a_tool_call_reaches_an_openai_client(daemon: Daemon, fakes: Any) -> None:
    _, claude = fakes
    claude.default = FakeReply(
        text="", tool_calls=[FakeToolCall("HassTurnOn", {"name": "kitchen light"})], args_chunk=3
    )
    client = openai.AsyncOpenAI(base_url=daemon.v1, api_key="x", max_retries=0, timeout=60)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "HassTurnOn",
                "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
            },
        }
    ]
    stream = await client.chat.completions.create(
        model="claude-route",
        messages=[{"role": "user", "content": "Turn on the kitchen light"}],  # type: ignore[list-item]
        tools=tools,
        stream=True,  # type: ignore[arg-type]
    )
    calls = []
    finish = None
    async for chunk in stream:
        if chunk.choices:
            calls.extend(chunk.choices[0].delta.tool_calls or [])
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(calls) == 1  # one complete call in one delta, never fragments
    assert calls[0].function.name == "HassTurnOn"
    assert calls[0].function.arguments == '{"name": "kitchen light"}' or (
        __import__("json").loads(calls[0].function.arguments or "") == {"name": "kitchen light"}
    )
    sent = claude.bodies[-1]
    assert sent["tools"][0]["name"] == "HassTurnOn" and sent["max_tokens"] >= 1


async def test_auto_route_header_shows_the_choice(daemon: Daemon) -> None:
    r = await post(daemon, {"model": "auto", "messages": [{"role": "user", "content": "Turn on the lights"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-route"] == "cloud-only (device command)"
    r = await post(daemon, {"model": "auto", "messages": HI, "max_tokens": 4})
    assert r.headers["x-zoe-route"] == "zoe-chat (no rule matched)"
    assert r.headers["x-zoe-served-by"] == "local:smol"


async def test_a_second_zoe_edge_is_an_openai_compatible_upstream(
    tmp_path: Path, smollm_path: Path, daemon: Daemon
) -> None:
    """Daemon B routes to daemon A (the fixture) as its cloud: the real thing, not a fake."""
    tmp_b = tmp_path / "b"
    tmp_b.mkdir()
    registry = write_registry(tmp_b, {"smol": smollm_entry(smollm_path)}, default="smol")
    data = yaml.safe_load(registry.read_text())
    data["providers"] = {"peer": {"type": "openai", "base_url": daemon.v1, "sampling_extensions": True}}
    data["routes"] = {"via-peer": {"targets": ["peer:smol"]}}
    registry.write_text(yaml.safe_dump(data))
    b = start_daemon(registry, tmp_b, "--no-preload", wait_ready=False)
    try:
        r = await post(b, {"model": "via-peer", "messages": HI, "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.headers["x-zoe-served-by"] == "peer:smol"
        direct = await post(daemon, {"model": "smol", "messages": HI, "max_tokens": 6, "temperature": 0})
        assert r.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]
        assert r.json()["usage"]["completion_tokens"] == direct.json()["usage"]["completion_tokens"]
    finally:
        b.stop()


async def test_hot_board_sends_requests_with_a_fallback_to_the_cloud(
    tmp_path: Path, smollm_path: Path, fakes: Any
) -> None:
    """A fake tegrastats reports the throttled Orin NX (tj 96 C): over the soft limit, then cooled."""
    from tests.telemetry.helpers import fake_tegrastats

    fixtures = Path(__file__).parent / "telemetry" / "fixtures"
    cloud, claude = fakes
    bin_dir = tmp_path / "bin"
    fake_tegrastats(bin_dir, fixtures / "orin-nx-16gb-throttled.txt")
    env = {**KEY_ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    registry = registry_with(tmp_path, smollm_path, cloud.url, claude.root)
    d = start_daemon(registry, tmp_path, "--telemetry-interval", "0.5", env=env)
    try:
        await asyncio.sleep(1.5)  # a few samples
        r = await post(d, {"model": "fast", "messages": HI, "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert r.headers["x-zoe-served-by"] == "cloud:gpt-fake"
        assert (
            "soft thermal limit" in r.headers["x-zoe-fallback-reason"] and "tj 96" in r.headers["x-zoe-fallback-reason"]
        )
        # a request with nowhere else to go still runs locally above the soft limit
        r = await post(d, {"model": "smol", "messages": HI, "max_tokens": 4})
        assert r.status_code == 200 and r.headers["x-zoe-served-by"] == "local:smol"
        # cool the board well under soft minus hysteresis: requests come home
        (bin_dir / "lines.txt").write_text((fixtures / "orin-nano-8gb-jp62-busy.txt").read_text())
        await asyncio.sleep(1.5)
        r = await post(d, {"model": "fast", "messages": HI, "max_tokens": 4})
        assert r.status_code == 200
        assert r.headers["x-zoe-served-by"] == "local:smol", r.headers.get("x-zoe-fallback-reason")
    finally:
        d.stop()
