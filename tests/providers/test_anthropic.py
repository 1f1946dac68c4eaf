"""Anthropic Messages translation, both directions, asserted field by field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.common import FakeReply, FakeToolCall
from tests.providers.util import calls_of, chat, collect, finish_of, provider, text_of
from zoe_edge.canonical import (
    ErrorEvent,
    Finish,
    GenerationRequest,
    Message,
    OutputConstraint,
    Sampling,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallRef,
    ToolChoice,
    Usage,
)
from zoe_edge.providers import ProviderError
from zoe_edge.providers.anthropic import build_body

LIGHT_SCHEMA = {"type": "object", "properties": {"entity_id": {"type": "string"}}, "required": ["entity_id"]}
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [
    Tool(name="turn_on", description="Turn on an entity", parameters=LIGHT_SCHEMA),
    Tool(name="get_weather", parameters=WEATHER_SCHEMA),
]
WEATHER = FakeToolCall("get_weather", {"city": "Zürich", "days": [1, 2], "opts": {"unit": "C", "x": None}}, "toolu_1")
LIGHT = FakeToolCall("turn_on", {"entity_id": "light.kitchen"}, "toolu_2")


def conversation(**fields: Any) -> GenerationRequest:
    return GenerationRequest(
        model="alias",
        messages=[
            Message(role="system", content="You are Zoe."),
            Message(role="user", content="Kitchen light on, and the weather?"),
            Message(
                role="assistant",
                content="Sure.",
                tool_calls=[
                    ToolCallRef(id="call_1", name="turn_on", arguments={"entity_id": "light.kitchen"}),
                    ToolCallRef(id="call.2", name="get_weather", arguments={"city": "Bern"}),
                ],
            ),
            Message(role="tool", content="on", tool_call_id="call_1"),
            Message(role="tool", content='{"sky": "sunny"}', tool_call_id="call.2"),
            Message(role="system", content="Be brief."),
            Message(role="user", content="Thanks!"),
        ],
        **fields,
    )


# --- request ---------------------------------------------------------------------------------


def test_request_body_full_translation() -> None:
    req = conversation(
        max_tokens=256,
        stop=["END", "###"],
        sampling=Sampling(temperature=0.5, top_p=0.9, top_k=40, seed=7, presence_penalty=0.1),
        tools=TOOLS,
    )
    body = build_body("claude-x", req, max_tokens_default=999)
    assert body["model"] == "claude-x"
    assert body["max_tokens"] == 256
    assert body["system"] == "You are Zoe.\n\nBe brief."
    assert body["stop_sequences"] == ["END", "###"]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.5, 0.9, 40)
    assert "seed" not in body and "presence_penalty" not in body  # no such knobs in the Messages API
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Kitchen light on, and the weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Sure."},
                {"type": "tool_use", "id": "call_1", "name": "turn_on", "input": {"entity_id": "light.kitchen"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Bern"}},
            ],
        },
        {
            "role": "user",  # both results merged into one user turn, with the next user text after them
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "on"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": '{"sky": "sunny"}'},
                {"type": "text", "text": "Thanks!"},
            ],
        },
    ]
    assert body["tools"] == [
        {"name": "turn_on", "description": "Turn on an entity", "input_schema": LIGHT_SCHEMA},
        {"name": "get_weather", "input_schema": WEATHER_SCHEMA},
    ]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert set(body) == {
        "model", "max_tokens", "system", "messages", "stop_sequences", "temperature", "top_p", "top_k",
        "stream", "tools", "tool_choice",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (ToolChoice(mode="auto"), False, {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice(mode="auto"), True, {"type": "auto"}),
        (ToolChoice(mode="required"), False, {"type": "any", "disable_parallel_tool_use": True}),
        (ToolChoice(mode="function", name="turn_on"), True, {"type": "tool", "name": "turn_on"}),
        (ToolChoice(mode="none"), False, {"type": "none"}),
    ],
)
def test_tool_choice_mapping(choice: ToolChoice, parallel: bool, expected: dict[str, Any]) -> None:
    body = build_body("c", chat(tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel))
    assert body["tool_choice"] == expected


def test_request_defaults_and_edge_cases() -> None:
    body = build_body("c", chat("hello"), max_tokens_default=333)
    assert body["max_tokens"] == 333  # required by the API: the config's default fills in
    assert "system" not in body and "tools" not in body and "stop_sequences" not in body
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    # temperature above Anthropic's maximum of 1 is clamped
    assert build_body("c", chat(sampling=Sampling(temperature=1.7)))["temperature"] == 1.0
    # a raw prompt becomes one user turn
    raw = build_body("c", GenerationRequest(model="a", prompt="Once upon"))
    assert raw["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Once upon"}]}]
    # JSON output is asked for in the system prompt (the API has no response_format)
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}}}
    sys_json = build_body("c", chat(constraint=OutputConstraint(kind="json_schema", json_schema=schema)))["system"]
    assert "JSON" in sys_json and '"boolean"' in sys_json


def test_id_less_tool_results_pair_with_calls_and_history_declares_tools() -> None:
    # the Ollama front sends calls and results without ids; Anthropic needs matching ids
    req = GenerationRequest(
        model="a",
        messages=[
            Message(role="user", content="on"),
            Message(role="assistant", tool_calls=[ToolCallRef(name="turn_on", arguments={"entity_id": "x"})]),
            Message(role="tool", content="done"),
            Message(role="user", content="and?"),
            Message(role="assistant", content="ok"),
            Message(role="assistant", content="more"),
        ],
    )
    body = build_body("c", req)
    use = body["messages"][1]["content"][0]
    result = body["messages"][2]["content"][0]
    assert use["type"] == "tool_use" and result["type"] == "tool_result"
    assert use["id"] and result["tool_use_id"] == use["id"]
    # consecutive assistant turns merged so roles alternate
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant"]
    assert body["messages"][3]["content"] == [{"type": "text", "text": "ok"}, {"type": "text", "text": "more"}]
    # tool_use blocks in history need declared tools even when the request offers none
    assert body["tools"] == [{"name": "turn_on", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "none"}


async def test_request_reaches_the_upstream_with_headers() -> None:
    async with AnthropicFake(api_key="ak-1") as fake:
        p = provider("anthropic", fake.url, key="ak-1", extra_headers={"anthropic-beta": "x-1"})
        events = await collect(p, conversation(tools=TOOLS), model="claude-up")
        await p.close()
    assert isinstance(events[-1], Finish)
    rec = fake.requests[0]
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == "ak-1"
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.headers["anthropic-beta"] == "x-1"
    assert rec.body == build_body("claude-up", conversation(tools=TOOLS), max_tokens_default=1024)


# --- responses -------------------------------------------------------------------------------


@pytest.mark.parametrize("whole", [False, True], ids=["stream", "non-stream"])
async def test_text_response(whole: bool) -> None:
    async with AnthropicFake() as fake:
        fake.reply(FakeReply(text="The kitchen light is on.", prompt_tokens=31, completion_tokens=9, whole=whole))
        p = provider("anthropic", fake.url)
        events = await collect(p)
        await p.close()
    assert text_of(events) == "The kitchen light is on."
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == (1 if whole else 6)  # the stream arrives in 4-character pieces
    assert calls_of(events) == []
    assert events[-1] == Finish("stop", Usage(prompt_tokens=31, completion_tokens=9, cached_tokens=0))


@pytest.mark.parametrize("whole", [False, True], ids=["stream", "non-stream"])
async def test_tool_use_response_assembled(whole: bool) -> None:
    async with AnthropicFake() as fake:
        reply = FakeReply(text="Checking.", tool_calls=[WEATHER, LIGHT], args_chunk=3, completion_tokens=50)
        reply.whole = whole
        fake.reply(reply)
        p = provider("anthropic", fake.url)
        events = await collect(p, chat(tools=TOOLS))
        await p.close()
    assert text_of(events) == "Checking."
    # each call arrives complete, once, with its arguments as an object, after the text
    calls = calls_of(events)
    assert calls == [
        ToolCall(0, "toolu_1", "get_weather", WEATHER.arguments),
        ToolCall(1, "toolu_2", "turn_on", {"entity_id": "light.kitchen"}),
    ]
    assert events.index(calls[0]) > max(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert events[-1] == Finish("tool_calls", Usage(12, 50, 0))


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
@pytest.mark.parametrize("whole", [False, True], ids=["stream", "non-stream"])
async def test_stop_reasons(stop_reason: str, expected: str, whole: bool) -> None:
    async with AnthropicFake() as fake:
        calls = [LIGHT] if stop_reason == "tool_use" else []
        fake.reply(FakeReply(text="abc", tool_calls=calls, finish_reason=stop_reason, whole=whole))
        p = provider("anthropic", fake.url)
        events = await collect(p, chat(stop=["##"]))
        await p.close()
    assert finish_of(events).reason == expected


@pytest.mark.parametrize("whole", [False, True], ids=["stream", "non-stream"])
async def test_usage_counts_cached_prompt_tokens(whole: bool) -> None:
    async with AnthropicFake() as fake:
        # the fake reports input_tokens=30 and cache_read_input_tokens=10, as the API splits them
        fake.reply(FakeReply(text="x", prompt_tokens=40, cached_tokens=10, completion_tokens=3, whole=whole))
        p = provider("anthropic", fake.url)
        events = await collect(p)
        await p.close()
    assert finish_of(events).usage == Usage(prompt_tokens=40, completion_tokens=3, cached_tokens=10)


async def test_mid_stream_error_event_ends_the_stream() -> None:
    async with AnthropicFake() as fake:
        fake.reply(FakeReply(text="abcdefghijkl", error_after=5))
        p = provider("anthropic", fake.url)
        events = await collect(p)
        await p.close()
    # message_start, block_start, ping, 2 deltas, then the error event
    assert text_of(events) == "abcdefgh"
    last = events[-1]
    assert isinstance(last, ErrorEvent)
    assert last.code == "overloaded_error" and last.status == 503
    assert "Overloaded" in last.message
    assert not any(isinstance(e, Finish) for e in events)


async def test_broken_tool_arguments_become_an_error_event() -> None:
    async with AnthropicFake() as fake:
        fake.reply(FakeReply(text="ok", tool_calls=[LIGHT], raw_arguments='{"entity_id": "light.'))
        p = provider("anthropic", fake.url)
        events = await collect(p)
        await p.close()
    assert text_of(events) == "ok"
    assert calls_of(events) == []
    last = events[-1]
    assert isinstance(last, ErrorEvent) and last.code == "upstream_malformed"
    assert "turn_on" in last.message


async def test_overloaded_529_is_retried_then_served() -> None:
    async with AnthropicFake() as fake:
        fake.fail(2, 529)
        p = provider("anthropic", fake.url)
        events = await collect(p)
        await p.close()
    assert text_of(events) == "Hello from the fake."
    assert len(fake.requests) == 3


async def test_overloaded_529_after_retries_is_a_retryable_503() -> None:
    async with AnthropicFake() as fake:
        fake.fail(3, 529)
        p = provider("anthropic", fake.url, retries=1)
        with pytest.raises(ProviderError) as info:
            await collect(p)
        await p.close()
    err = info.value
    assert (err.status, err.code, err.retryable, err.upstream_status) == (503, "upstream_overloaded", True, 529)
    assert "overloaded_error" in err.message
    assert len(fake.requests) == 2
