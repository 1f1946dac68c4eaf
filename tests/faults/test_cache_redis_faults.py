"""Redis behind the response cache fails in every way it can: stopped, frozen, slow, restarted.

No request may fail because of it: each is answered (by the model, bypassing the cache), the
failure is logged and shows in ``/admin/status`` under ``cache``, and caching resumes on its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, imported for this module's tests

MODEL = "smollm2-135m"
WARM = "Name a fruit."


@pytest.fixture(scope="module")
def appliance(
    tmp_path_factory: pytest.TempPathFactory, smollm_path: Path, redis_server: RedisServer
) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("redis-faults")
    registry = write_registry(tmp, {MODEL: smollm_entry(smollm_path)}, {"zoe-chat": MODEL})
    data = yaml.safe_load(registry.read_text())
    data["cache"] = {"backend": "redis", "url": redis_server.url, "timeout": 0.2, "retry_interval": 0.3}
    registry.write_text(yaml.safe_dump(data))
    d = start_daemon(registry, tmp)
    yield d
    d.stop()


def body(text: str) -> dict[str, Any]:
    return {"model": "zoe-chat", "messages": [{"role": "user", "content": text}], "max_tokens": 4}


async def burst(d: Daemon, texts: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return list(await asyncio.gather(*(client.post(d.v1 + "/chat/completions", json=body(t)) for t in texts)))


def all_answered(responses: list[httpx.Response]) -> list[str]:
    for r in responses:
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"], r.text
    return [r.headers["x-zoe-cache"] for r in responses]


def cache_status(d: Daemon, healthy: bool, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cache: dict[str, Any] = d.status()["cache"]
        if cache["healthy"] is healthy:
            return cache
        time.sleep(0.05)
    raise AssertionError(f"cache healthy never became {healthy}: {d.status()['cache']}")


def caching_again(d: Daemon) -> None:
    """After recovery the stored answer is served again (Redis kept it) or, if Redis lost it, re-stored."""
    cache_status(d, True)
    first = httpx.post(d.v1 + "/chat/completions", json=body(WARM), timeout=120)
    assert first.status_code == 200 and first.headers["x-zoe-cache"] in ("hit", "miss")
    time.sleep(0.3)
    again = httpx.post(d.v1 + "/chat/completions", json=body(WARM), timeout=120)
    assert again.status_code == 200 and again.headers["x-zoe-cache"] == "hit"


def test_warm(appliance: Daemon) -> None:
    caching_again(appliance)


def test_slow_redis_debug_sleep(appliance: Daemon, redis_server: RedisServer) -> None:
    failures = appliance.status()["cache"]["failures"]
    sleeper = threading.Thread(target=redis_server.command, args=("DEBUG", "SLEEP", "3"))
    sleeper.start()
    time.sleep(0.2)
    try:
        states = all_answered(asyncio.run(burst(appliance, [WARM, "Name a colour.", "Name a tree."])))
        assert set(states) == {"bypass"}
        # the generations may outlast the sleep, and the probe may already have found Redis again;
        # the failure stays on record either way
        cache = appliance.status()["cache"]
        assert cache["failures"] > failures and cache["backend"] == "redis"
        assert "Timeout" in cache["last_error"] or "timed out" in cache["last_error"], cache
    finally:
        sleeper.join()
    assert "requests bypass the cache" in appliance.log()
    caching_again(appliance)


def test_frozen_redis_sigstop(appliance: Daemon, redis_server: RedisServer) -> None:
    redis_server.pause()
    try:
        states = all_answered(asyncio.run(burst(appliance, [WARM, "Name a bird.", WARM])))
        assert set(states) == {"bypass"}
        cache = cache_status(appliance, False)
        assert cache["last_error"] and cache["down_since"] is not None
        # while it is down, requests do not even try Redis: no wait on a frozen server
        assert all_answered(asyncio.run(burst(appliance, [WARM]))) == ["bypass"]
    finally:
        redis_server.resume()
    caching_again(appliance)


def test_stopped_and_restarted_redis(appliance: Daemon, redis_server: RedisServer) -> None:
    redis_server.stop()
    states = all_answered(asyncio.run(burst(appliance, [WARM, "Name a city.", "Name a river.", WARM])))
    assert set(states) == {"bypass"}
    cache = cache_status(appliance, False)
    assert cache["failures"] >= 1 and cache["last_error_at"] is not None
    redis_server.start()
    caching_again(appliance)
    assert "caching resumed" in appliance.log()
    assert appliance.status()["cache"]["requests"]["bypass"] >= 10
