"""The in-memory response cache through the real daemon, SmolLM2 and the official clients.

A hit must give the same answer as the miss that stored it and must not reach the worker: the
supervisor's request counter for the model does not move, and a hit is served with the model unloaded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import yaml

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("cache")
    registry = write_registry(tmp, {MODEL: smollm_entry(smollm_path)}, {"zoe-chat": MODEL})
    data = yaml.safe_load(registry.read_text())
    data["cache"] = {"backend": "memory", "max_entries": 50}
    registry.write_text(yaml.safe_dump(data))
    d = start_daemon(registry, tmp)
    yield d
    d.stop()


def oai(d: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.v1, api_key="unused", max_retries=0, timeout=120)


def worker_requests(d: Daemon) -> int:
    return int(d.status()["models"].get(MODEL, {}).get("requests", 0))


def ask(d: Daemon, text: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"model": "zoe-chat", "messages": [{"role": "user", "content": text}], "max_tokens": 6, **extra}
    r = httpx.post(d.v1 + "/chat/completions", json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    return r


def test_openai_hit_gives_the_same_answer_without_the_worker(cached: Daemon) -> None:
    client = oai(cached)
    messages: Any = [{"role": "user", "content": "Name a fruit."}]
    raw = client.chat.completions.with_raw_response.create(model="zoe-chat", messages=messages, max_tokens=6)
    assert raw.headers["x-zoe-cache"] == "miss" and raw.headers["x-zoe-served-by"] == f"local:{MODEL}"
    miss = raw.parse()
    before = worker_requests(cached)
    # the model's own name instead of the alias: same resolved model, same key
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=6)
    hit = raw.parse()
    assert raw.headers["x-zoe-cache"] == "hit"
    assert raw.headers["x-zoe-served-by"] == f"cache:{MODEL}"
    assert raw.headers["x-zoe-route"] == f"{MODEL} (model)"
    assert hit.choices[0].message.content == miss.choices[0].message.content
    assert hit.choices[0].finish_reason == miss.choices[0].finish_reason
    assert hit.model == MODEL and hit.id != miss.id
    assert miss.usage is not None and hit.usage is not None
    assert hit.usage.completion_tokens == miss.usage.completion_tokens
    assert hit.usage.prompt_tokens == miss.usage.prompt_tokens
    assert hit.usage.prompt_tokens_details is not None
    assert hit.usage.prompt_tokens_details.cached_tokens == miss.usage.prompt_tokens
    assert worker_requests(cached) == before


def test_hit_replays_as_an_sse_stream(cached: Daemon) -> None:
    client = oai(cached)
    messages: Any = [{"role": "user", "content": "Name an animal."}]
    miss = client.chat.completions.create(model="zoe-chat", messages=messages, max_tokens=6)
    before = worker_requests(cached)
    raw = client.chat.completions.with_raw_response.create(
        model="zoe-chat", messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-zoe-cache"] == "hit"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == miss.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # a stream, not one blob
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == miss.usage.completion_tokens  # type: ignore[union-attr]
    assert worker_requests(cached) == before


def test_ollama_client_replays_an_answer_the_openai_front_stored(cached: Daemon) -> None:
    """Canonical events are stored, not wire bytes: the other dialect replays them as NDJSON."""
    text = "Name a colour."
    first = ask(cached, text)
    assert first.headers["x-zoe-cache"] == "miss"
    expected = first.json()["choices"][0]["message"]["content"]
    before = worker_requests(cached)

    async def stream() -> list[Any]:
        client = ollama.AsyncClient(host=cached.url, timeout=120)
        messages = [{"role": "user", "content": text}]
        return [p async for p in await client.chat("zoe-chat", messages, stream=True, options={"num_predict": 6})]

    parts = asyncio.run(stream())
    assert "".join(p.message.content or "" for p in parts) == expected
    assert len(parts) > 2 and parts[-1].done and parts[-1].eval_count == first.json()["usage"]["completion_tokens"]
    assert parts[-1].prompt_eval_count == 0  # the prompt was not evaluated again
    # the raw NDJSON carries the header too
    with httpx.stream(
        "POST",
        cached.url + "/api/chat",
        json={"model": "zoe-chat", "messages": [{"role": "user", "content": text}], "options": {"num_predict": 6}},
        timeout=120,
    ) as r:
        assert r.headers["x-zoe-cache"] == "hit" and r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(line["message"]["content"] for line in lines) == expected and lines[-1]["done"]
    assert worker_requests(cached) == before


def test_only_deterministic_requests_are_cached(cached: Daemon) -> None:
    before = worker_requests(cached)
    for _ in range(2):
        r = ask(cached, "Name a planet.", temperature=0.9)
        assert r.headers["x-zoe-cache"] == "bypass"
    assert worker_requests(cached) == before + 2
    seeded = [ask(cached, "Name a planet.", temperature=0.9, seed=5) for _ in range(2)]
    assert [r.headers["x-zoe-cache"] for r in seeded] == ["miss", "hit"]
    assert worker_requests(cached) == before + 3


def test_client_cache_controls(cached: Daemon) -> None:
    text = "Name a tree."
    before = worker_requests(cached)
    # no-store: answered, looked up, not kept
    assert ask(cached, text, cache={"no-store": True}).headers["x-zoe-cache"] == "miss"
    assert ask(cached, text).headers["x-zoe-cache"] == "miss"  # so still a miss; this one is stored
    assert ask(cached, text).headers["x-zoe-cache"] == "hit"
    # no-cache in the body or the header: not answered from the cache, reaches the worker
    assert ask(cached, text, cache={"no-cache": True}).headers["x-zoe-cache"] == "bypass"
    assert ask(cached, text, headers={"Cache-Control": "no-cache"}).headers["x-zoe-cache"] == "bypass"
    assert ask(cached, text, headers={"Cache-Control": "no-store"}).headers["x-zoe-cache"] == "hit"
    assert worker_requests(cached) == before + 4


def test_per_request_ttl_expires(cached: Daemon) -> None:
    text = "Name a river."
    assert ask(cached, text, cache={"ttl": 1}).headers["x-zoe-cache"] == "miss"
    assert ask(cached, text).headers["x-zoe-cache"] == "hit"
    time.sleep(1.2)
    assert ask(cached, text).headers["x-zoe-cache"] == "miss"


@pytest.mark.parametrize(
    ("path", "cache"),
    [
        ("/v1/chat/completions", {"no-cash": True}),
        ("/v1/chat/completions", {"ttl": -1}),
        ("/v1/chat/completions", "yes please"),
        ("/api/chat", {"ttl": "forever-ish"}),
        ("/api/generate", {"no-store": "sometimes"}),
    ],
)
def test_bad_cache_controls_are_a_400_in_the_callers_dialect(cached: Daemon, path: str, cache: Any) -> None:
    body: dict[str, Any] = {"model": "zoe-chat", "cache": cache, "stream": False}
    if path == "/api/generate":
        body["prompt"] = "Hi"
    else:
        body["messages"] = [{"role": "user", "content": "Hi"}]
    r = httpx.post(cached.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert "cache" in message
    if not path.startswith("/api/"):
        assert error["param"].startswith("cache")


def test_hit_is_served_with_the_model_unloaded(cached: Daemon) -> None:
    text = "Name a mountain."
    expected = ask(cached, text).json()["choices"][0]["message"]["content"]
    r = httpx.post(cached.url + f"/admin/models/{MODEL}/unload", timeout=30)
    assert r.status_code == 200 and r.json()["loaded"] is None
    hit = ask(cached, text)
    assert hit.headers["x-zoe-cache"] == "hit" and hit.json()["choices"][0]["message"]["content"] == expected
    status = cached.status()
    assert status["slot"]["model"] is None and status["slot"]["pid"] is None  # nothing was loaded for it
    cache = status["cache"]
    assert cache["backend"] == "memory" and cache["healthy"] and 0 < cache["entries"] <= 50
    assert cache["requests"]["hit"] >= 1 and cache["requests"]["miss"] >= 1


def test_tool_call_answer_replays_with_the_same_call(cached: Daemon) -> None:
    client = oai(cached)
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "HassTurnOn",
                "description": "Turns on a device",
                "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
            },
        }
    ]
    messages: Any = [{"role": "user", "content": "Turn on the kitchen light."}]
    kwargs: Any = {
        "model": "zoe-chat",
        "messages": messages,
        "tools": tools,
        "tool_choice": "required",
        "max_tokens": 40,
    }
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    assert raw.headers["x-zoe-cache"] == "miss"
    miss = raw.parse()
    before = worker_requests(cached)
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    assert raw.headers["x-zoe-cache"] == "hit"
    hit = raw.parse()
    calls_miss, calls_hit = miss.choices[0].message.tool_calls, hit.choices[0].message.tool_calls
    assert calls_miss and calls_hit and hit.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls_hit] == [  # type: ignore[union-attr]
        (c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
        for c in calls_miss
    ]
    assert worker_requests(cached) == before


def test_legacy_completions_endpoint_is_cached_too(cached: Daemon) -> None:
    client = oai(cached)
    raw = client.completions.with_raw_response.create(model="zoe-chat", prompt="The sky is", max_tokens=5)
    assert raw.headers["x-zoe-cache"] == "miss"
    miss = raw.parse()
    raw = client.completions.with_raw_response.create(model="zoe-chat", prompt="The sky is", max_tokens=5)
    assert raw.headers["x-zoe-cache"] == "hit" and raw.parse().choices[0].text == miss.choices[0].text
