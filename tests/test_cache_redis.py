"""The Redis cache backend through the real daemon, against a real ``redis-server`` on a free port.

Hit/miss/bypass, TTL expiry in Redis itself, stream replay, Redis killed with requests still
succeeding, Redis back and caching again, and a second appliance sharing the same Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, imported for this module's tests

MODEL = "smollm2-135m"
PREFIX = "zoe-edge:cache:"


def redis_registry(tmp: Path, smollm_path: Path, url: str, **top: Any) -> Path:
    registry = write_registry(tmp, {MODEL: smollm_entry(smollm_path)}, {"zoe-chat": MODEL})
    data = yaml.safe_load(registry.read_text())
    data["cache"] = {"backend": "redis", "url": url, "timeout": 0.3, "retry_interval": 0.3}
    data.update(top)
    registry.write_text(yaml.safe_dump(data))
    return registry


@pytest.fixture(scope="module")
def appliance(
    tmp_path_factory: pytest.TempPathFactory, smollm_path: Path, redis_server: RedisServer
) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("redis-cache")
    d = start_daemon(redis_registry(tmp, smollm_path, redis_server.url), tmp)
    yield d
    d.stop()


def worker_requests(d: Daemon) -> int:
    return int(d.status()["models"].get(MODEL, {}).get("requests", 0))


def ask(d: Daemon, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "zoe-chat", "messages": [{"role": "user", "content": text}], "max_tokens": 5, **extra}
    r = httpx.post(d.v1 + "/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r


def keys(server: RedisServer) -> list[str]:
    reply = server.command("KEYS", PREFIX + "*").decode()
    return [line for line in reply.split("\r\n") if line.startswith(PREFIX)]


def wait_healthy(d: Daemon, healthy: bool, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cache: dict[str, Any] = d.status()["cache"]
        if cache["healthy"] is healthy:
            return cache
        time.sleep(0.1)
    raise AssertionError(f"cache healthy never became {healthy}: {d.status()['cache']}")


def test_miss_stores_in_redis_and_the_hit_skips_the_worker(appliance: Daemon, redis_server: RedisServer) -> None:
    assert keys(redis_server) == []
    miss = ask(appliance, "Name a fruit.")
    assert miss.headers["x-zoe-cache"] == "miss"
    deadline = time.monotonic() + 5
    while not keys(redis_server) and time.monotonic() < deadline:  # the store is written after the answer
        time.sleep(0.05)
    stored = keys(redis_server)
    assert len(stored) == 1
    ttl = int(redis_server.command("TTL", stored[0]).decode().strip(":\r\n"))
    assert 0 < ttl <= 600  # every entry expires: a shared Redis does not fill up
    before = worker_requests(appliance)
    hit = ask(appliance, "Name a fruit.")
    assert hit.headers["x-zoe-cache"] == "hit"
    assert hit.json()["choices"][0]["message"]["content"] == miss.json()["choices"][0]["message"]["content"]
    assert worker_requests(appliance) == before
    assert ask(appliance, "Name a fruit.", temperature=1.0).headers["x-zoe-cache"] == "bypass"


def test_ttl_expiry_in_redis(appliance: Daemon, redis_server: RedisServer) -> None:
    text = "Name a bird."
    assert ask(appliance, text, cache={"ttl": 1}).headers["x-zoe-cache"] == "miss"
    time.sleep(0.3)
    assert ask(appliance, text).headers["x-zoe-cache"] == "hit"
    time.sleep(1.0)
    assert ask(appliance, text).headers["x-zoe-cache"] == "miss"  # Redis expired it


def test_stream_replay_from_redis(appliance: Daemon) -> None:
    client = openai.OpenAI(base_url=appliance.v1, api_key="unused", max_retries=0, timeout=120)
    messages: Any = [{"role": "user", "content": "Name a fish."}]
    raw = client.chat.completions.with_raw_response.create(
        model="zoe-chat", messages=messages, max_tokens=5, stream=True
    )
    assert raw.headers["x-zoe-cache"] == "miss"
    streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    time.sleep(0.3)
    raw = client.chat.completions.with_raw_response.create(
        model="zoe-chat", messages=messages, max_tokens=5, stream=True
    )
    assert raw.headers["x-zoe-cache"] == "hit"
    chunks = [c for c in raw.parse() if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == streamed and len(chunks) > 2


def test_second_appliance_shares_the_redis(
    appliance: Daemon, redis_server: RedisServer, tmp_path: Path, smollm_path: Path
) -> None:
    """Another daemon on the same Redis answers from what the first stored, without ever loading a model."""
    text = "Name a vegetable."
    expected = ask(appliance, text).json()["choices"][0]["message"]["content"]
    time.sleep(0.3)
    registry = redis_registry(tmp_path, smollm_path, redis_server.url, preload="none")
    other = start_daemon(registry, tmp_path, wait_ready=False)  # nothing to wait for: no model preloads
    try:
        hit = ask(other, text)
        assert hit.headers["x-zoe-cache"] == "hit" and hit.json()["choices"][0]["message"]["content"] == expected
        slot = other.status()["slot"]
        assert slot["model"] is None and slot["pid"] is None and worker_requests(other) == 0
    finally:
        other.stop()


def test_redis_killed_then_back(appliance: Daemon, redis_server: RedisServer) -> None:
    cached_text = "Name a fruit."
    redis_server.stop()
    for text in (cached_text, "Name a city."):
        r = ask(appliance, text)  # still answered, by the model
        assert r.headers["x-zoe-cache"] == "bypass"
    cache = wait_healthy(appliance, False)
    assert cache["backend"] == "redis" and cache["last_error"] and cache["last_error_at"]
    assert "127.0.0.1" in cache["url"]
    assert "redis cache at redis://127.0.0.1" in appliance.log() and "requests bypass the cache" in appliance.log()
    redis_server.start()  # back, empty, on the same port
    wait_healthy(appliance, True)
    assert "caching resumed" in appliance.log()
    assert ask(appliance, "Name a city.").headers["x-zoe-cache"] == "miss"
    time.sleep(0.3)
    assert ask(appliance, "Name a city.").headers["x-zoe-cache"] == "hit"
