"""The OpenAI and Ollama fronts alone, over a scripted gateway: what the official SDKs read back from their
JSON and streams, errors before and after the first byte, Ollama's load / unload / keep_alive calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import ollama
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.fakes.gateway import MODEL, FakeGateway
from zoe_edge.access.keys import KeyTable
from zoe_edge.api import ollama as ollama_front
from zoe_edge.api import openai as openai_front
from zoe_edge.api.common import CONFIG, GATEWAY, SETTINGS
from zoe_edge.api.middlewares import api_key_auth, request_context
from zoe_edge.canonical import ErrorEvent, Finish, TextDelta, ToolCall, Usage
from zoe_edge.config import Settings
from zoe_edge.errors import ServiceUnavailable
from zoe_edge.registry import parse_registry
from zoe_edge.service.config import LiveConfig

ANSWER = [TextDelta("Red, "), TextDelta("green and blue."), Finish("stop", Usage(12, 5, cached_tokens=4))]
CALL = [
    ToolCall(0, "call_1", "HassTurnOn", {"name": "kitchen light", "domain": ["light"]}),
    Finish("tool_calls", Usage(30, 9)),
]


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeGateway, TestClient]]:
    gateway = FakeGateway()
    app = web.Application(middlewares=[request_context, api_key_auth])
    app[SETTINGS] = Settings()
    registry = parse_registry({"default": MODEL, "models": {MODEL: {"file": "/nowhere.gguf"}}})
    app[CONFIG] = LiveConfig(registry, KeyTable([]), Path("models.yaml"))
    app[GATEWAY] = gateway
    openai_front.add_routes(app)
    ollama_front.add_routes(app)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield gateway, client
    finally:
        await client.close()


def sdk(client: TestClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def test_openai_whole_and_streamed_answers_read_back_by_the_sdk(served: tuple[FakeGateway, TestClient]) -> None:
    gateway, client = served
    gateway.script = ANSWER
    messages = [{"role": "user", "content": "Colours?"}]
    whole = await sdk(client).chat.completions.create(model="zoe-chat", messages=messages)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == "Red, green and blue." and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (12, 5)
    assert whole.usage.prompt_tokens_details is not None and whole.usage.prompt_tokens_details.cached_tokens == 4
    assert whole.model == MODEL and gateway.requests[-1].messages is not None
    stream = await sdk(client).chat.completions.create(
        model="zoe-chat",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Red, green and blue."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 17
    assert gateway.requests[-1].stream is True


async def test_openai_tool_calls_carry_arguments_as_a_json_string(served: tuple[FakeGateway, TestClient]) -> None:
    gateway, client = served
    gateway.script = CALL
    tools = [{"type": "function", "function": {"name": "HassTurnOn", "parameters": {"type": "object"}}}]
    resp = await sdk(client).chat.completions.create(
        model="zoe-chat",
        messages=[{"role": "user", "content": "light on"}],
        tools=tools,  # type: ignore[arg-type]
    )
    message = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls is not None and message.tool_calls[0].id == "call_1"
    assert json.loads(message.tool_calls[0].function.arguments) == {"name": "kitchen light", "domain": ["light"]}


async def test_errors_before_and_after_the_first_byte(served: tuple[FakeGateway, TestClient]) -> None:
    gateway, client = served
    gateway.raises = ServiceUnavailable("no target could serve 'zoe-chat'", code="no_target_available", retry_after=7)
    with pytest.raises(openai.InternalServerError) as err:
        await sdk(client).chat.completions.create(model="zoe-chat", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503 and err.value.response.headers["Retry-After"] == "7"
    r = await client.post("/api/chat", json={"model": "zoe-chat", "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 503 and await r.json() == {"error": "no target could serve 'zoe-chat'"}
    # after the first byte each dialect ends its stream with its own error frame
    gateway.raises = None
    gateway.script = [TextDelta("Half"), ErrorEvent("worker killed", "worker_crashed", 503)]
    r = await client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    )
    frames = [line for line in (await r.text()).splitlines() if line.startswith("data: ")]
    assert r.status == 200 and json.loads(frames[-1][6:])["error"]["code"] == "worker_crashed"
    r = await client.post("/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert lines[0]["message"]["content"] == "Half" and lines[-1] == {"error": "worker killed"}


async def test_ollama_answers_read_back_by_the_ollama_client(served: tuple[FakeGateway, TestClient]) -> None:
    gateway, client = served
    c = ollama.AsyncClient(host=str(client.make_url("")))
    gateway.script = ANSWER
    whole = await c.chat(model="zoe-chat:latest", messages=[{"role": "user", "content": "Colours?"}], stream=False)
    assert whole.message.content == "Red, green and blue." and whole.done_reason == "stop"
    assert whole.prompt_eval_count == 8 and whole.eval_count == 5  # evaluated prompt tokens: 12 less 4 cached
    streamed = [p async for p in await c.generate(model="zoe-chat", prompt="Colours?", stream=True)]
    assert "".join(p.response for p in streamed) == "Red, green and blue." and streamed[-1].done
    gateway.script = CALL
    called = await c.chat(model="zoe-chat", messages=[{"role": "user", "content": "light on"}], stream=False)
    assert called.message.tool_calls is not None
    assert called.message.tool_calls[0].function.arguments == {"name": "kitchen light", "domain": ["light"]}


async def test_ollama_empty_requests_load_unload_and_keep_alive(served: tuple[FakeGateway, TestClient]) -> None:
    gateway, client = served
    c = ollama.AsyncClient(host=str(client.make_url("")))
    loaded = await c.chat(model="zoe-chat", messages=[], keep_alive="10m")
    assert loaded.done_reason == "load" and gateway.lifecycle == [("load", "zoe-chat")]
    assert gateway.kept_alive == [(MODEL, 600.0)]
    unloaded = await c.generate(model="zoe-chat", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload" and gateway.lifecycle[-1] == ("unload", "zoe-chat")
    assert gateway.requests == []  # nothing was generated
    # a bad keep_alive is a 400 before anything is routed
    r = await client.post(
        "/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "x"}], "keep_alive": "soon"}
    )
    assert r.status == 400 and "keep_alive" in (await r.json())["error"] and gateway.requests == []


async def test_a_bug_below_the_front_is_a_500_in_the_caller_s_dialect(served: tuple[FakeGateway, TestClient]) -> None:
    gateway, client = served
    gateway.raises = RuntimeError("a bug")  # type: ignore[assignment]
    r = await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    body = await r.json()
    assert r.status == 500 and body["error"]["type"] == "server_error" and "RuntimeError" in body["error"]["message"]
    r = await client.post("/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 500 and "RuntimeError" in (await r.json())["error"]
    gateway.raises = None
    gateway.script = ANSWER
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False}
    r = await client.post("/api/chat", json=body)
    assert r.status == 200  # and it keeps serving
