"""The Anthropic front's translation without a daemon: bodies to canonical requests, scripted canonical events
to Messages JSON and SSE, read back by the official ``anthropic`` SDK's own types and stream accumulator."""

from __future__ import annotations

import json
from typing import Any, cast

import anthropic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SDKMessage
from anthropic.types import MessageTokensCount
from pydantic import SecretStr

from tests.fakes.gateway import FakeGateway
from zoe_edge.api import anthropic as front
from zoe_edge.api.common import GATEWAY, SETTINGS
from zoe_edge.api.middlewares import api_key_auth, request_context
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import (
    ErrorEvent,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    Usage,
)
from zoe_edge.config import Settings
from zoe_edge.errors import InvalidRequest, ModelNotFound, ServiceUnavailable, ZoeError
from zoe_edge.service import Service

MODEL = "smollm2-135m"
KEY = "sk-test-key"


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
async def client(aiohttp_client: Any, fake: FakeGateway) -> TestClient[Any, Any]:
    app = web.Application(middlewares=[request_context, api_key_auth])
    app[SETTINGS] = Settings(api_key=SecretStr(KEY))
    # cast: the fake implements what a front calls, and need not follow every later addition to Service
    app[GATEWAY] = cast(Service, fake)
    front.add_routes(app)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


AUTH = {"x-api-key": KEY}
BODY: dict[str, Any] = {"model": "zoe-chat", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def finish(reason: Any = "stop", prompt: int = 12, completion: int = 3, cached: int = 4) -> Finish:
    return Finish(reason, Usage(prompt, completion, cached))


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(lines) == {"event", "data"}, block
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# --- the body -> canonical request ------------------------------------------------------------


def test_a_full_conversation_maps_to_canonical_messages() -> None:
    body = front.MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 50,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "they want weather", "signature": "x"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "4C"}]},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "any"},
            "stop_sequences": ["\n\n"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "service_tier": "auto",  # unknown fields are ignored
        }
    )
    req = body.to_canonical()
    assert [(m.role, m.content) for m in req.messages or []] == [
        ("system", "Be brief.\n\nBe kind."),
        ("user", "Weather in Oslo?"),
        ("assistant", "Checking."),
        ("tool", "4C"),
        ("tool", "Error: boom"),
        ("user", "And tomorrow?"),
    ]
    assistant = (req.messages or [])[2]
    assert assistant.tool_calls is not None and assistant.tool_calls[0].model_dump() == {
        "id": "toolu_1",
        "name": "get_weather",
        "arguments": {"city": "Oslo"},
    }
    assert [m.tool_call_id for m in req.messages or [] if m.role == "tool"] == ["toolu_1", "toolu_2"]
    assert req.tools[0].parameters == WEATHER["input_schema"] and req.tools[0].description == WEATHER["description"]
    assert req.tool_choice.mode == "required" and not req.parallel_tool_calls
    assert req.stop == ["\n\n"] and req.max_tokens == 50 and req.think is True
    assert (req.sampling.temperature, req.sampling.top_p, req.sampling.top_k) == (0.5, 0.9, 40)


@pytest.mark.parametrize(
    ("choice", "mode", "name"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "get_weather"}, "function", "get_weather"),
    ],
)
def test_tool_choice(choice: dict[str, Any], mode: str, name: str | None) -> None:
    req = front.MessagesRequest.model_validate({**BODY, "tools": [WEATHER], "tool_choice": choice}).to_canonical()
    assert (req.tool_choice.mode, req.tool_choice.name) == (mode, name)


@pytest.mark.parametrize(
    ("thinking", "think"), [(None, None), ({"type": "disabled"}, False), ({"type": "adaptive"}, None)]
)
def test_thinking(thinking: dict[str, Any] | None, think: bool | None) -> None:
    assert front.MessagesRequest.model_validate({**BODY, "thinking": thinking}).to_canonical().think is think


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages[0].content"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": [""]}, "stop_sequences"),
        ({"tools": [{"name": "f"}]}, "input_schema"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search", "input_schema": {}}]}, "tools[0].type"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, "not among the tools"),
        ({"tool_choice": {"type": "tool"}, "tools": [WEATHER]}, "tool_choice"),
        ({"tool_choice": {"type": "any"}}, "needs at least one tool"),
    ],
)
def test_bad_bodies_are_400s(change: dict[str, Any], needle: str) -> None:
    data = {k: v for k, v in {**BODY, **change}.items() if v is not None}
    with pytest.raises(InvalidRequest) as info:
        front.MESSAGES.canonical(front.MESSAGES.parse(data))
    assert needle in info.value.message


# --- whole answers ----------------------------------------------------------------------------


async def test_whole_message_validates_as_the_sdk_message(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [
        ReasoningDelta("hmm"),
        TextDelta("Hello"),
        TextDelta(" there"),
        ToolCall(0, "call_1", "get_weather", {"city": "Oslo"}),
        finish("tool_calls"),
    ]
    r = await client.post("/v1/messages", json={**BODY, "tools": [WEATHER]}, headers=AUTH)
    assert r.status == 200 and r.headers["request-id"] == r.headers["X-Request-Id"]
    body = await r.json()
    msg = SDKMessage.model_validate(body)
    assert msg.id.startswith("msg_") and msg.model == MODEL and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert body["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": ""}
    assert body["content"][1] == {"type": "text", "text": "Hello there"}
    assert body["content"][2] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    assert msg.stop_reason == "tool_use" and msg.stop_sequence is None
    assert body["usage"] == {
        "input_tokens": 8,
        "output_tokens": 3,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
    }


@pytest.mark.parametrize(
    ("reason", "stop"), [("stop", "end_turn"), ("length", "max_tokens"), ("cancelled", "end_turn")]
)
async def test_stop_reasons(client: TestClient[Any, Any], fake: FakeGateway, reason: str, stop: str) -> None:
    fake.script = [TextDelta("x"), finish(reason)]
    body = await (await client.post("/v1/messages", json=BODY, headers=AUTH)).json()
    assert body["stop_reason"] == stop


# --- streams ----------------------------------------------------------------------------------


async def test_stream_events_assemble_in_the_sdk(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [
        ReasoningDelta("let me "),
        ReasoningDelta("see"),
        TextDelta("Hi"),
        TextDelta("!"),
        ToolCall(0, "call_1", "get_weather", {"city": "Oslo"}),
        ToolCall(1, "", "get_weather", {"city": "Bergen"}),
        finish("tool_calls", 20, 9, 0),
    ]
    r = await client.post("/v1/messages", json={**BODY, "stream": True, "tools": [WEATHER]}, headers=AUTH)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await r.text())
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    # each block opens, gets its deltas, closes before the next opens
    assert names[2:-2] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    snapshot = None
    for _, data in events:
        if data["type"] != "ping":
            snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs={})  # type: ignore[arg-type]
    assert snapshot is not None
    content = [b.to_dict() for b in snapshot.content]
    assert content[0] == {"type": "thinking", "thinking": "let me see", "signature": ""}
    assert content[1] == {"type": "text", "text": "Hi!"}
    assert content[2] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    assert content[3]["input"] == {"city": "Bergen"} and str(content[3]["id"]).startswith("toolu_")
    assert snapshot.stop_reason == "tool_use"
    assert (snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (20, 9)


async def test_an_error_after_the_first_byte_is_an_error_event(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [TextDelta("Hel"), ErrorEvent("the worker crashed", "worker_crashed", 503)]
    r = await client.post("/v1/messages", json={**BODY, "stream": True}, headers=AUTH)
    assert r.status == 200
    events = sse_events(await r.text())
    assert [n for n, _ in events][-1] == "error"
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "the worker crashed"}}


async def test_an_empty_answer_streams_no_blocks(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [finish("stop", 5, 0, 0)]
    r = await client.post("/v1/messages", json={**BODY, "stream": True}, headers=AUTH)
    names = [n for n, _ in sse_events(await r.text())]
    assert names == ["message_start", "ping", "message_delta", "message_stop"]


# --- errors before the first byte, auth, count_tokens ------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (ModelNotFound("no model 'x'"), 404, "not_found_error"),
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (ServiceUnavailable("busy", retry_after=5), 503, "overloaded_error"),
        (ZoeError("broke"), 500, "api_error"),
    ],
)
async def test_errors_in_anthropic_shape(
    client: TestClient[Any, Any], fake: FakeGateway, exc: ZoeError, status: int, kind: str
) -> None:
    fake.raises = exc
    r = await client.post("/v1/messages", json=BODY, headers=AUTH)
    assert r.status == status
    body = await r.json()
    assert body == {
        "type": "error",
        "error": {"type": kind, "message": exc.message},
        "request_id": r.headers["request-id"],
    }
    sdk_error = anthropic.Anthropic(api_key="-")._make_status_error("x", body=body, response=_fake_response(status))
    assert sdk_error.status_code == status


def _fake_response(status: int) -> Any:
    import httpx2

    return httpx2.Response(status, request=httpx2.Request("POST", "http://x/v1/messages"))


async def test_a_missing_body_field_is_a_400(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/messages", json={"model": "m", "messages": BODY["messages"]}, headers=AUTH)
    body = await r.json()
    assert r.status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"x-api-key": "wrong"}, 401), ({"x-api-key": KEY}, 200), ({"Authorization": f"Bearer {KEY}"}, 200)],
)
async def test_auth(client: TestClient[Any, Any], fake: FakeGateway, headers: dict[str, str], status: int) -> None:
    fake.script = [TextDelta("x"), finish()]
    r = await client.post("/v1/messages", json=BODY, headers=headers)
    assert r.status == status
    if status == 401:
        assert (await r.json())["error"]["type"] == "authentication_error"


async def test_count_tokens_is_a_one_token_generation(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [TextDelta("x"), finish("length", 42, 1, 30)]
    body = {k: v for k, v in BODY.items() if k != "max_tokens"}
    r = await client.post("/v1/messages/count_tokens", json={**body, "tools": [WEATHER]}, headers=AUTH)
    assert r.status == 200, await r.text()
    assert MessageTokensCount.model_validate(await r.json()).input_tokens == 42  # cached ones included
    req = fake.requests[-1]
    assert req.max_tokens == 1 and not req.stream and req.tools[0].name == "get_weather"
    assert fake.caches[-1] == CacheControls(no_store=True)


async def test_unknown_messages_path_is_an_anthropic_404(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/messages/batches", json={}, headers=AUTH)
    assert r.status == 404 and (await r.json())["error"]["type"] == "not_found_error"
