"""Keys, budgets, the usage ledger and the metrics, end to end: a real daemon, SmolLM2, a loopback cloud fake."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import Daemon, free_port, start_daemon
from tests.fakes.openai_fake import OpenAIFake
from tests.keyed import (
    ADMIN_KEY,
    API_KEY,
    CLOUD_COST,
    FILE_KEY,
    HA_KEY,
    LIMITED_KEY,
    METERED_KEY,
    bearer,
    keyed_env,
    keyed_registry,
)

HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture()
def daemon(tmp_path: Path, smollm_path: Path, cloud: OpenAIFake) -> Iterator[Daemon]:
    d = start_daemon(keyed_registry(tmp_path, smollm_path, cloud.url), tmp_path, env=keyed_env(), api_key=API_KEY)
    yield d
    d.stop()


@pytest.fixture()
def cached_daemon(tmp_path: Path, smollm_path: Path, cloud: OpenAIFake) -> Iterator[Daemon]:
    """The same daemon with the in-memory response cache on."""
    registry = keyed_registry(tmp_path, smollm_path, cloud.url, cache={})
    d = start_daemon(registry, tmp_path, env=keyed_env(), api_key=API_KEY)
    yield d
    d.stop()


async def chat(d: Daemon, key: str | None, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 4, **extra}
    async with httpx.AsyncClient(timeout=120) as client:
        return await client.post(d.v1 + "/chat/completions", json=body, headers=bearer(key) if key else {})


async def get(d: Daemon, path: str, key: str | None, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(d.url + path, params=params, headers=bearer(key) if key else {})


async def usage_rows(d: Daemon) -> list[dict[str, Any]]:
    r = await get(d, "/admin/usage", ADMIN_KEY, limit=1000)
    assert r.status_code == 200, r.text
    return list(r.json()["rows"])


async def cli(*args: str) -> str:
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "zoe_edge", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_unknown_key_401_disallowed_alias_403_rpm_429(daemon: Daemon) -> None:
    r = await chat(daemon, "zk-nobody-knows-me", "zoe-chat")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    r = await chat(daemon, None, "zoe-chat")
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]

    r = await chat(daemon, LIMITED_KEY, "cloud-first")
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "model_not_allowed" and "'limited' may not use 'cloud-first'" in err["message"]

    # rpm 2 (the 403 above did not count: it never started)
    for _ in range(2):
        r = await chat(daemon, LIMITED_KEY, "zoe-chat")
        assert r.status_code == 200, r.text
    r = await chat(daemon, LIMITED_KEY, "zoe-chat")
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and "2 requests per minute" in err["message"]
    # the Ollama front speaks the same rules in its own error shape (asked at once: the window is 60 s)
    client = ollama.AsyncClient(host=daemon.url, headers=bearer(LIMITED_KEY))
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="zoe-chat", messages=HI, options={"num_predict": 2})
    assert caught.value.status_code == 429
    # tpm counts the tokens a request really used: the first passes and uses more than 20
    r = await chat(daemon, METERED_KEY, "zoe-chat")
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] > 20
    r = await chat(daemon, METERED_KEY, "zoe-chat")
    assert r.status_code == 429 and "20 tokens per minute" in r.json()["error"]["message"]
    assert int(r.headers["Retry-After"]) >= 1
    # other keys are not affected; the file: key and the unrestricted ZOE_API_KEY work
    assert (await chat(daemon, FILE_KEY, "smol")).status_code == 200
    assert (await chat(daemon, API_KEY, "smol")).status_code == 200


async def test_budget_exhausted_keeps_the_key_local(daemon: Daemon, cloud: OpenAIFake) -> None:
    for _ in range(2):  # 2 x $0.026 passes the $0.03 budget
        r = await chat(daemon, HA_KEY, "cloud-first")
        assert r.status_code == 200, r.text
        assert r.headers["x-zoe-served-by"] == "cloud:gpt-fake"
    r = await chat(daemon, HA_KEY, "cloud-first")
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-served-by"] == "local:smol"
    assert "daily cloud budget" in r.headers["x-zoe-fallback-reason"]
    assert len(cloud.requests) == 2
    r = await chat(daemon, HA_KEY, "cloud-only")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "budget_exceeded"
    assert int(r.headers["Retry-After"]) > 0
    # another key still reaches the cloud
    r = await chat(daemon, API_KEY, "cloud-first")
    assert r.headers["x-zoe-served-by"] == "cloud:gpt-fake"

    r = await get(daemon, "/admin/status", ADMIN_KEY)
    status = r.json()
    assert status["keys"]["ha"]["spent_today_usd"] == pytest.approx(2 * CLOUD_COST)
    assert status["keys"]["default"]["spent_today_usd"] == pytest.approx(CLOUD_COST)

    metrics = (await get(daemon, "/metrics", API_KEY)).text
    assert 'zoe_fallbacks_total{reason="budget_exceeded"} 1.0' in metrics
    assert 'zoe_cost_usd_total{key="ha"} 0.052' in metrics
    assert 'zoe_requests_total{route="cloud-first",status="200",target="local:smol"} 1.0' in metrics
    assert 'zoe_supervisor_state{state="ready"} 1.0' in metrics
    assert "zoe_queue_depth 0.0" in metrics
    assert 'zoe_swaps_total{model="smol"} 1.0' in metrics
    assert "zoe_load_duration_seconds_count 1.0" in metrics
    assert 'zoe_tokens_total{kind="completion"}' in metrics
    assert "zoe_ttft_seconds_bucket" in metrics and "zoe_ledger_healthy 1.0" in metrics
    assert (await get(daemon, "/metrics", None)).status_code == 401


async def test_every_request_is_one_ledger_row(cached_daemon: Daemon, cloud: OpenAIFake) -> None:
    daemon = cached_daemon
    oa = openai.AsyncOpenAI(base_url=daemon.v1, api_key=HA_KEY, max_retries=0)
    sent: list[dict[str, Any]] = []

    # local, not streamed
    raw = await oa.chat.completions.with_raw_response.create(model="zoe-chat", messages=HI, max_tokens=4)
    sent.append({"target": "local:smol", "status": 200, "route": "zoe-chat", "id": raw.headers["x-request-id"]})
    assert raw.headers["x-zoe-priority"] == "normal"  # no header, route or key priority: OpenAI's default
    # the same request streamed: the cache's answer, replayed as a stream
    async with oa.chat.completions.with_streaming_response.create(
        model="zoe-chat", messages=HI, max_tokens=4, stream=True
    ) as resp:
        async for _ in resp.iter_lines():
            pass
        sent.append({"target": "cache:smol", "status": 200, "route": "zoe-chat", "id": resp.headers["x-request-id"]})
    # cloud, not streamed and streamed
    raw = await oa.chat.completions.with_raw_response.create(model="cloud-first", messages=HI)
    sent.append({"target": "cloud:gpt-fake", "status": 200, "route": "cloud-first", "id": raw.headers["x-request-id"]})
    async with oa.chat.completions.with_streaming_response.create(
        model="cloud-first", messages=HI, stream=True, stream_options={"include_usage": True}
    ) as resp:
        async for _ in resp.iter_lines():
            pass
        sent.append(
            {"target": "cloud:gpt-fake", "status": 200, "route": "cloud-first", "id": resp.headers["x-request-id"]}
        )
    # Ollama, streamed, local
    client = ollama.AsyncClient(host=daemon.url, headers=bearer(HA_KEY))
    async for _ in await client.chat(model="zoe-chat", messages=HI, stream=True, options={"num_predict": 3}):
        pass
    sent.append({"target": "local:smol", "status": 200, "route": "zoe-chat", "id": None})
    # errors: unknown model, bad body, bad key, cloud down
    r = await chat(daemon, API_KEY, "no-such-model")
    sent.append({"target": None, "status": 404, "route": None, "id": r.headers["x-request-id"]})
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(daemon.v1 + "/chat/completions", content=b"{not json", headers=bearer(API_KEY))
    sent.append({"target": None, "status": 400, "route": None, "id": r.headers["x-request-id"]})
    r = await chat(daemon, "zk-wrong", "zoe-chat")
    sent.append({"target": None, "status": 401, "route": None, "id": r.headers["x-request-id"]})
    cloud.fail(1, 500)
    r = await chat(daemon, API_KEY, "cloud-only")
    assert r.status_code == 502, r.text
    sent.append({"target": None, "status": 502, "route": "cloud-only", "id": r.headers["x-request-id"]})

    rows = await usage_rows(daemon)
    assert len(rows) == len(sent)
    for want, got in zip(sent, rows, strict=True):
        assert got["status"] == want["status"], (want, got)
        assert got["target"] == want["target"], (want, got)
        assert got["route"] == want["route"], (want, got)
        if want["id"]:
            assert got["request_id"] == want["id"]
        assert got["duration_ms"] > 0 and got["ts"] > 0
    # deterministic local answers are looked up (miss, then hit); cloud answers at the default temperature are
    # not; a request that fails before routing never reaches the cache
    assert [r["cache"] for r in rows] == ["miss", "hit", "bypass", "bypass", "miss", None, None, None, "bypass"]
    ok = [r for r in rows if r["status"] == 200]
    for row in ok:
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["duration_ms"]
    assert [r["locality"] for r in ok] == ["local", "cache", "cloud", "cloud", "local"]
    tokens = [(r["prompt_tokens"], r["completion_tokens"]) for r in rows[:2]]
    assert tokens[0] == tokens[1]  # a hit reports the counts of the answer it replays
    assert [r["key_id"] for r in rows[:5]] == ["ha"] * 5
    assert rows[5]["key_id"] == "default" and rows[7]["key_id"] is None
    assert [r["cost_usd"] for r in ok] == [0, 0, pytest.approx(CLOUD_COST), pytest.approx(CLOUD_COST), 0]
    assert rows[2]["prompt_tokens"] == 12 and rows[2]["completion_tokens"] == 7
    assert rows[4]["endpoint"] == "/api/chat"
    assert "does not exist" in rows[5]["error"] and "not valid JSON" in rows[6]["error"]
    # the priority each got, and why: Ollama's chat is the voice path; a request refused before routing has none
    assert [r["priority"] for r in rows] == ["normal"] * 4 + ["interactive", None, None, None, "normal"]
    assert rows[4]["priority_reason"] == "Ollama chat: voice default"
    assert rows[0]["priority_reason"] == "openai-chat: default"
    assert {(r["suspensions"], r["paused_ms"], r["suspend_cost_ms"]) for r in rows} == {(0, 0.0, 0.0)}
    by_priority = (await get(daemon, "/admin/usage", ADMIN_KEY, group_by="priority", since="1h")).json()["groups"]
    assert {g["priority"]: g["requests"] for g in by_priority} == {"-": 3, "interactive": 1, "normal": 5}
    assert {g["suspended"] for g in by_priority} == {0}

    by_key = (await get(daemon, "/admin/usage", ADMIN_KEY, group_by="key", since="1h")).json()["groups"]
    ha = next(g for g in by_key if g["key"] == "ha")
    assert ha["requests"] == 5 and ha["cloud"] == 2 and ha["local"] == 2 and ha["cache_hits"] == 1
    assert ha["cost_usd"] == pytest.approx(2 * CLOUD_COST)
    r = await get(daemon, "/admin/usage", ADMIN_KEY, group_by="colour")
    assert r.status_code == 400 and "group_by" in r.json()["error"]["message"]

    # the CLI reads the same file directly
    db, config = str(daemon.log_path.parent / "usage.sqlite3"), str(daemon.log_path.parent / "models.yaml")
    out = await cli("usage", "--usage-db", db, "--config", config, "--group-by", "route", "--json")
    routes = {g["route"]: g for g in json.loads(out)}
    assert routes["zoe-chat"]["requests"] == 3 and routes["cloud-first"]["requests"] == 2
    by_priority_cli = {
        g["priority"]: g
        for g in json.loads(
            await cli("usage", "--usage-db", db, "--config", config, "--group-by", "priority", "--json")
        )
    }
    assert {p: g["requests"] for p, g in by_priority_cli.items()} == {g["priority"]: g["requests"] for g in by_priority}
    table = await cli("usage", "--usage-db", db, "--config", config, "--group-by", "model")
    assert table.splitlines()[0].split()[:3] == ["MODEL", "REQUESTS", "ERRORS"]
    assert any(line.startswith("cloud:gpt-fake") for line in table.splitlines())

    # the file is a plain SQLite database anyone can read
    with sqlite3.connect(daemon.log_path.parent / "usage.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == len(sent)


def test_public_bind_without_keys_is_refused(tmp_path: Path, smollm_path: Path) -> None:
    from tests.conftest import smollm_entry, write_registry

    registry = write_registry(tmp_path, {"smol": smollm_entry(smollm_path)})
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("ZOE_API_KEY",)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoe_edge",
            "serve",
            "--config",
            str(registry),
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in out.stderr
    assert "--insecure-no-auth" in out.stderr
