"""X-Zoe-Priority through the real fronts and the official clients, over the scripted gateway: a bad value is
a 400 in each front's own dialect naming the allowed values, a good one (or the traffic default) comes back in
``x-zoe-priority``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import anthropic
import ollama
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.fakes.gateway import MODEL, FakeGateway
from tests.unit.test_priority import ai_task_body, ha_body
from zoe_edge.access.keys import KeyTable
from zoe_edge.api import anthropic as anthropic_front
from zoe_edge.api import ollama as ollama_front
from zoe_edge.api import openai as openai_front
from zoe_edge.api.common import CONFIG, GATEWAY, SETTINGS
from zoe_edge.api.middlewares import api_key_auth, request_context
from zoe_edge.canonical import Event, Finish, Priority, TextDelta, Usage
from zoe_edge.config import Settings
from zoe_edge.registry import parse_registry
from zoe_edge.service import Service
from zoe_edge.service.config import LiveConfig

ANSWER: list[Event] = [TextDelta("Done."), Finish("stop", Usage(12, 2))]
ALLOWED = "must be one of interactive, normal, background, got 'urgent'"
BAD = {"X-Zoe-Priority": "urgent"}


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeGateway, TestClient[Any, Any]]]:
    gateway = FakeGateway()
    gateway.script = ANSWER
    app = web.Application(middlewares=[request_context, api_key_auth])
    app[SETTINGS] = Settings()
    registry = parse_registry({"default": MODEL, "models": {MODEL: {"file": "/nowhere.gguf"}}})
    app[CONFIG] = LiveConfig(registry, KeyTable([]), Path("models.yaml"))
    app[GATEWAY] = cast(Service, gateway)
    openai_front.add_routes(app)
    ollama_front.add_routes(app)
    anthropic_front.add_routes(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield gateway, client
    finally:
        await client.close()


def oai(client: TestClient[Any, Any], headers: dict[str, str] | None = None) -> openai.AsyncOpenAI:
    url = str(client.make_url("/v1"))
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, default_headers=headers)


MESSAGES: Any = [{"role": "user", "content": "Hi"}]


async def test_a_bad_priority_is_an_openai_400_naming_the_allowed_values(
    served: tuple[FakeGateway, TestClient[Any, Any]],
) -> None:
    gateway, client = served
    with pytest.raises(openai.BadRequestError) as err:
        await oai(client, BAD).chat.completions.create(model="zoe-chat", messages=MESSAGES)
    body = cast(dict[str, Any], err.value.body)
    assert ALLOWED in body["message"] and body["param"] == "X-Zoe-Priority" and body["code"] == "invalid_priority"
    with pytest.raises(openai.BadRequestError, match="interactive, normal, background"):
        await oai(client, BAD).completions.create(model="zoe-chat", prompt="Hi")
    with pytest.raises(openai.BadRequestError, match="interactive, normal, background"):
        await oai(client, BAD).embeddings.create(model="zoe-chat", input="Hi")
    assert gateway.requests == []  # refused before anything was routed


async def test_a_bad_priority_is_an_ollama_400(served: tuple[FakeGateway, TestClient[Any, Any]]) -> None:
    gateway, client = served
    c = ollama.AsyncClient(host=str(client.make_url("")), headers=BAD)
    with pytest.raises(ollama.ResponseError) as err:
        await c.chat(model="zoe-chat", messages=MESSAGES)
    assert err.value.status_code == 400 and ALLOWED in err.value.error
    with pytest.raises(ollama.ResponseError, match="interactive, normal, background"):
        await c.embed(model="zoe-chat", input="Hi")
    raw = await client.post("/api/generate", json={"model": "zoe-chat", "prompt": "Hi"}, headers=BAD)
    assert raw.status == 400 and ALLOWED in (await raw.json())["error"]  # Ollama's {"error": "..."}
    assert gateway.requests == []


async def test_a_bad_priority_is_an_anthropic_400(served: tuple[FakeGateway, TestClient[Any, Any]]) -> None:
    _, client = served
    sdk = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("")), api_key="unused", max_retries=0, default_headers=BAD
    )
    with pytest.raises(anthropic.BadRequestError) as err:
        await sdk.messages.create(model="zoe-chat", max_tokens=8, messages=MESSAGES)
    body = cast(dict[str, Any], err.value.body)
    assert body["type"] == "error" and ALLOWED in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError, match="interactive, normal, background"):
        await sdk.messages.count_tokens(model="zoe-chat", messages=MESSAGES)


async def test_the_priority_comes_back_in_x_zoe_priority(served: tuple[FakeGateway, TestClient[Any, Any]]) -> None:
    gateway, client = served
    raw = await oai(client).chat.completions.with_raw_response.create(model="zoe-chat", messages=MESSAGES)
    assert raw.headers["x-zoe-priority"] == "normal" and raw.headers["x-zoe-priority-reason"] == "openai-chat: default"
    assert gateway.contexts[-1].traffic == "openai-chat"
    streamed = await oai(client, {"X-Zoe-Priority": "background"}).chat.completions.with_raw_response.create(
        model="zoe-chat", messages=MESSAGES, stream=True
    )
    assert streamed.headers["x-zoe-priority"] == "background"  # on a stream too, before its first byte
    assert streamed.headers["x-zoe-priority-reason"] == "X-Zoe-Priority header"
    assert gateway.contexts[-1].requested_priority is Priority.BACKGROUND
    # Home Assistant's Ollama conversation turn, byte for byte, is the voice path; its AI Task is background
    for body, expected in ((ha_body("assist-first-turn.request.json"), "interactive"), (ai_task_body(), "background")):
        r = await client.post("/api/chat", data=json.dumps(body))
        assert r.status == 200 and r.headers["x-zoe-priority"] == expected
        await r.read()
    assert {ctx.traffic for ctx in gateway.contexts[-2:]} == {"ollama-chat"}
    r = await client.post(
        "/v1/messages/count_tokens", json={"model": "zoe-chat", "messages": MESSAGES}, headers={"x-api-key": "k"}
    )
    assert r.status == 200 and r.headers["x-zoe-priority-reason"] == "anthropic-count-tokens: default"
