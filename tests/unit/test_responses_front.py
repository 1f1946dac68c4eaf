"""The Responses front without a daemon: bodies to canonical requests, scripted canonical events to response
objects and SSE, read back by the official ``openai`` SDK (its strict ``Response`` model and its stream
accumulator), and the stored responses' endpoints per client key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openai.types.responses import Response

from tests.fakes.gateway import FakeGateway
from zoe_edge.access.keys import ClientKey
from zoe_edge.api import responses as front
from zoe_edge.api.common import GATEWAY, SETTINGS, context
from zoe_edge.api.middlewares import request_context
from zoe_edge.canonical import (
    ErrorEvent,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    Usage,
)
from zoe_edge.config import Settings
from zoe_edge.conversations import ResponseStore

MODEL = "smollm2-135m"
KEY_A, KEY_B = "sk-key-a", "sk-key-b"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def finish(reason: Any = "stop", prompt: int = 12, completion: int = 3) -> Finish:
    return Finish(reason, Usage(prompt, completion, 4))


@pytest.fixture
def fake() -> FakeGateway:
    fake = FakeGateway()
    fake.script = [TextDelta("Hello"), TextDelta(" there."), finish()]
    return fake


@web.middleware
async def key_from_bearer(request: web.Request, handler: Any) -> web.StreamResponse:
    """What the daemon's key middleware leaves in the context: the key id behind the bearer token."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    context(request).key = ClientKey({KEY_A: "a", KEY_B: "b"}[token])
    return await handler(request)  # type: ignore[no-any-return]


@pytest.fixture
async def client(aiohttp_client: Any, fake: FakeGateway, tmp_path: Path) -> TestClient[Any, Any]:
    app = web.Application(middlewares=[request_context, key_from_bearer])
    app[SETTINGS] = Settings(state_dir=tmp_path)
    app[GATEWAY] = fake  # type: ignore[misc]
    front.add_routes(app, ResponseStore(tmp_path / "responses.sqlite3"))
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def sdk(client: TestClient[Any, Any], key: str = KEY_A) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sse_events(raw: str) -> list[dict[str, Any]]:
    out = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(lines) == {"event", "data"}, block
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append(data)
    return out


# --- the body -> canonical request ------------------------------------------------------------


def test_items_make_one_conversation() -> None:
    body = front.ResponsesRequest.model_validate(
        {
            "model": "zoe-chat",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Metric units."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "4 C, rain"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 20,
            "temperature": 0.5,
            "reasoning": {"effort": "minimal"},
            "unknown_field": 1,
        }
    )
    req = body.to_canonical()
    assert [(m.role, m.content) for m in req.messages or []] == [
        ("system", "Be brief."),
        ("system", "Metric units."),
        ("user", "Weather in Oslo?"),
        ("assistant", ""),
        ("tool", "4 C, rain"),
    ]
    call = (req.messages or [])[3].tool_calls
    assert call is not None and call[0].id == "call_1" and call[0].arguments == {"city": "Oslo"}
    assert (req.messages or [])[4].tool_call_id == "call_1" and (req.messages or [])[4].name == "get_weather"
    assert req.tool_choice.mode == "function" and req.tool_choice.name == "get_weather"
    assert req.tools[0].parameters == WEATHER["parameters"]
    assert (req.max_tokens, req.sampling.temperature, req.think) == (20, 0.5, False)


def test_text_format_becomes_the_constraint() -> None:
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}}}
    body = front.ResponsesRequest.model_validate(
        {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": schema}}}
    )
    req = body.to_canonical()
    assert req.constraint is not None and req.constraint.json_schema == schema
    plain = front.ResponsesRequest.model_validate(
        {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    )
    assert (c := plain.to_canonical().constraint) is not None and c.kind == "json"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "only"),
        ({"model": "m", "input": [{"type": "image_generation_call"}]}, "not supported"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": "x", "max_output_tokens": "many"}, "max_output_tokens"),
        ({"model": "m", "input": "x", "background": True}, "background"),
        ({"model": "m", "input": "x", "tool_choice": "required"}, "needs at least one tool"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}, "JSON"),
    ],
)
async def test_bad_bodies_are_400_naming_the_problem(
    client: TestClient[Any, Any], body: dict[str, Any], says: str
) -> None:
    r = await client.post("/v1/responses", json=body, headers=auth())
    assert r.status == 400, await r.text()
    error = (await r.json())["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"


# --- whole answers --------------------------------------------------------------------------


async def test_whole_response_parses_strictly_in_the_sdk(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [ReasoningDelta("thinking"), TextDelta("Hello"), TextDelta(" there."), finish()]
    r = await client.post(
        "/v1/responses", json={"model": "zoe-chat", "input": "Hi", "metadata": {"k": "v"}}, headers=auth()
    )
    assert r.status == 200
    data = await r.json()
    resp = Response.model_validate(data)  # strict: every required field present with the right type
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.status == "completed"
    assert resp.model == MODEL and resp.output_text == "Hello there."
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    assert data["output"][0]["content"] == [{"type": "reasoning_text", "text": "thinking"}]
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens) == (12, 3)
    assert resp.usage.total_tokens == 15 and resp.usage.input_tokens_details.cached_tokens == 4
    assert resp.metadata == {"k": "v"} and resp.tools == [] and resp.tool_choice == "auto"
    assert data["store"] is True


async def test_length_limit_is_incomplete(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [TextDelta("Once upon"), finish("length")]
    resp = await sdk(client).responses.create(model="zoe-chat", input="story", max_output_tokens=2)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens" and resp.max_output_tokens == 2


async def test_a_call_is_a_function_call_item(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [ToolCall(0, "call_abc", "get_weather", {"city": "Oslo"}), finish("tool_calls")]
    resp = await sdk(client).responses.create(  # type: ignore[call-overload]
        model="zoe-chat", input="Weather?", tools=[WEATHER], tool_choice="required"
    )
    assert [item.type for item in resp.output] == ["function_call"]
    call = resp.output[0]
    assert call.type == "function_call" and call.call_id == "call_abc" and call.name == "get_weather"
    assert call.id is not None and call.id.startswith("fc_") and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert resp.tool_choice == "required" and resp.tools[0].type == "function"
    assert fake.requests[-1].tool_choice.mode == "required"


# --- streams --------------------------------------------------------------------------------


async def test_stream_events_in_order_and_the_sdk_assembles_them(
    client: TestClient[Any, Any], fake: FakeGateway
) -> None:
    fake.script = [
        ReasoningDelta("Hmm."),
        TextDelta("Hello"),
        TextDelta(" there."),
        ToolCall(0, "call_x", "get_weather", {"city": "Oslo"}),
        finish("tool_calls"),
    ]
    r = await client.post("/v1/responses", json={"model": "zoe-chat", "input": "Hi", "stream": True}, headers=auth())
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await r.text())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Hello there." and [i.type for i in final.output] == [
        "reasoning",
        "message",
        "function_call",
    ]

    async with sdk(client).responses.stream(model="zoe-chat", input="Hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        assembled = await stream.get_final_response()
    assert "".join(deltas) == assembled.output_text == "Hello there."
    assert assembled.output[-1].type == "function_call"
    assert assembled.output[-1].arguments == '{"city": "Oslo"}'


async def test_stream_that_hits_the_limit_ends_incomplete(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [TextDelta("Once"), finish("length")]
    r = await client.post("/v1/responses", json={"model": "m", "input": "Hi", "stream": True}, headers=auth())
    events = sse_events(await r.text())
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


async def test_an_error_after_the_first_byte_is_response_failed(
    client: TestClient[Any, Any], fake: FakeGateway
) -> None:
    fake.script = [TextDelta("Partial"), ErrorEvent("the worker died", "worker_failed", 500)]
    stream = await sdk(client).responses.create(model="zoe-chat", input="Hi", stream=True)
    events = [event async for event in stream]
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed" and last.response.error is not None
    assert last.response.error.code == "server_error" and "worker died" in last.response.error.message
    assert last.response.output_text == "Partial"
    stored = await sdk(client).responses.retrieve(last.response.id)
    assert stored.status == "failed"


async def test_an_empty_answer_is_an_empty_message(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [finish()]
    async with sdk(client).responses.stream(model="zoe-chat", input="Hi") as stream:
        resp = await stream.get_final_response()
    assert resp.output_text == "" and [i.type for i in resp.output] == ["message"]


# --- stored responses -----------------------------------------------------------------------


async def test_stored_responses_chain_retrieve_delete_per_key(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    a, b = sdk(client, KEY_A), sdk(client, KEY_B)
    first = await a.responses.create(model="zoe-chat", input="My name is Ada.", instructions="Be kind.")
    fake.script = [ToolCall(0, "call_1", "get_weather", {"city": "Oslo"}), finish("tool_calls")]
    second = await a.responses.create(
        model="zoe-chat",
        input="Weather?",
        previous_response_id=first.id,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    fake.script = [TextDelta("Rainy."), finish()]
    third = await a.responses.create(
        model="zoe-chat",
        previous_response_id=second.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "rain"}],
    )
    assert third.previous_response_id == second.id and third.output_text == "Rainy."
    messages = fake.requests[-1].messages or []
    # the instructions do not carry over; every earlier input and output item does
    assert [(m.role, m.content) for m in messages] == [
        ("user", "My name is Ada."),
        ("assistant", "Hello there."),
        ("user", "Weather?"),
        ("assistant", ""),
        ("tool", "rain"),
    ]
    assert messages[3].tool_calls is not None and messages[3].tool_calls[0].id == "call_1"

    got = await a.responses.retrieve(first.id)
    assert got.model_dump() == first.model_dump()
    items = await a.responses.input_items.list(third.id)
    assert [i.type for i in items.data] == ["function_call_output"]

    # another key: every way in is the same 404 as an id never seen
    for call in (b.responses.retrieve(first.id), b.responses.delete(first.id), a.responses.retrieve("resp_nope")):
        with pytest.raises(openai.NotFoundError):
            await call
    with pytest.raises(openai.NotFoundError) as missing:
        await b.responses.create(model="zoe-chat", input="Hi", previous_response_id=first.id)
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError):
        await a.responses.cancel(first.id)
    r = await client.delete(f"/v1/responses/{first.id}", headers=auth())
    assert await r.json() == {"id": first.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await a.responses.retrieve(first.id)


async def test_store_false_is_not_kept(client: TestClient[Any, Any]) -> None:
    resp = await sdk(client).responses.create(model="zoe-chat", input="Hi", store=False)
    assert resp.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        await sdk(client).responses.retrieve(resp.id)
