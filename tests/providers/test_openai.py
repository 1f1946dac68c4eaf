"""OpenAI-compatible provider: request body, stream and non-stream answers, fragments, usage, errors."""

from __future__ import annotations

import json

import pytest

from tests.fakes.common import FakeReply, FakeToolCall
from tests.fakes.openai_fake import OpenAIFake
from tests.providers.util import calls_of, chat, collect, finish_of, provider, text_of
from zoe_edge.canonical import (
    ErrorEvent,
    Finish,
    GenerationRequest,
    Message,
    OutputConstraint,
    Sampling,
    TextDelta,
    Timings,
    Tool,
    ToolCall,
    ToolCallRef,
    ToolChoice,
    Usage,
)
from zoe_edge.providers import ProviderError
from zoe_edge.providers.openai import build_body

SCHEMA = {"type": "object", "properties": {"entity_id": {"type": "string"}}}
TOOLS = [Tool(name="turn_on", description="Turn on", parameters=SCHEMA), Tool(name="get_weather")]
WEATHER = FakeToolCall("get_weather", {"city": "Zürich", "days": [1, 2], "o": {"u": "C", "n": None}}, "call_a")
LIGHT = FakeToolCall("turn_on", {"entity_id": "light.kitchen"}, "call_b")


def test_request_body_full_translation() -> None:
    req = GenerationRequest(
        model="alias",
        messages=[
            Message(role="system", content="You are Zoe."),
            Message(role="user", content="Light on", name="anna"),
            Message(
                role="assistant",
                tool_calls=[ToolCallRef(id="c1", name="turn_on", arguments={"entity_id": "light.k", "n": 2})],
            ),
            Message(role="tool", content="done", tool_call_id="c1"),
            Message(role="assistant", content="Done."),
        ],
        max_tokens=64,
        stop=["\n\n"],
        sampling=Sampling(temperature=0.2, top_p=0.8, top_k=20, seed=5, presence_penalty=0.5, frequency_penalty=0.1),
        tools=TOOLS,
        tool_choice=ToolChoice(mode="function", name="turn_on"),
    )
    body = build_body("gpt-up", req)
    assert body["model"] == "gpt-up"
    assert body["messages"] == [
        {"role": "system", "content": "You are Zoe."},
        {"role": "user", "content": "Light on", "name": "anna"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "turn_on", "arguments": '{"entity_id": "light.k", "n": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
        {"role": "assistant", "content": "Done."},
    ]
    assert json.loads(body["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {"entity_id": "light.k", "n": 2}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 64 and body["stop"] == ["\n\n"]
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.2, 0.8, 5)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, 0.1)
    assert "top_k" not in body  # not an OpenAI parameter unless sampling_extensions is on
    assert body["tools"] == [
        {"type": "function", "function": {"name": "turn_on", "description": "Turn on", "parameters": SCHEMA}},
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "turn_on"}}
    assert body["parallel_tool_calls"] is False
    assert "response_format" not in body


def test_request_body_variants() -> None:
    assert build_body("m", chat(tools=TOOLS, tool_choice=ToolChoice(mode="required")))["tool_choice"] == "required"
    assert build_body("m", chat(tools=TOOLS, tool_choice=ToolChoice(mode="none")))["tool_choice"] == "none"
    plain = build_body("m", chat())
    assert "tools" not in plain and "max_tokens" not in plain and "temperature" not in plain
    assert build_body("m", chat(constraint=OutputConstraint(kind="json")))["response_format"] == {"type": "json_object"}
    schema_fmt = build_body("m", chat(constraint=OutputConstraint(kind="json_schema", json_schema=SCHEMA)))
    assert schema_fmt["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA},
    }
    ext = build_body("m", chat(sampling=Sampling(top_k=30, min_p=0.05, repeat_penalty=1.1)), sampling_extensions=True)
    assert (ext["top_k"], ext["min_p"], ext["repeat_penalty"]) == (30, 0.05, 1.1)
    raw = build_body("m", GenerationRequest(model="a", prompt="Once upon"))
    assert raw["prompt"] == "Once upon" and "messages" not in raw


async def test_headers_and_paths() -> None:
    async with OpenAIFake(api_key="sk-9") as fake:
        p = provider("openai", fake.url, key="sk-9")
        await collect(p)
        await collect(p, GenerationRequest(model="a", prompt="Once"))
        await p.close()
        keyless = provider("openai", fake.url, api_key_env=None)
        assert keyless.disabled_reason() is None
        fake.api_key = None
        await collect(keyless)
        await keyless.close()
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/completions", "/v1/chat/completions"]
    assert fake.requests[0].headers["Authorization"] == "Bearer sk-9"
    assert "Authorization" not in fake.requests[2].headers


async def test_stream_text_and_usage() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="It is sunny in Bern.", prompt_tokens=50, completion_tokens=6, cached_tokens=32))
        p = provider("openai", fake.url)
        events = await collect(p)
        await p.close()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["It i", "s su", "nny ", "in B", "ern."]
    assert events[-1] == Finish("stop", Usage(prompt_tokens=50, completion_tokens=6, cached_tokens=32))


@pytest.mark.parametrize("whole", [False, True], ids=["stream", "non-stream"])
async def test_tool_call_fragments_assembled(whole: bool) -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="", tool_calls=[WEATHER, LIGHT], args_chunk=2, completion_tokens=44, whole=whole))
        p = provider("openai", fake.url)
        events = await collect(p, chat(tools=TOOLS, parallel_tool_calls=True))
        await p.close()
    assert events == [
        ToolCall(0, "call_a", "get_weather", WEATHER.arguments),
        ToolCall(1, "call_b", "turn_on", {"entity_id": "light.kitchen"}),
        Finish("tool_calls", Usage(12, 44, 0)),
    ]


async def test_stream_and_non_stream_agree() -> None:
    reply = FakeReply(text="Turning it on.", tool_calls=[LIGHT], prompt_tokens=20, completion_tokens=9)
    async with OpenAIFake() as fake:
        fake.reply(reply, FakeReply(**{**reply.__dict__, "whole": True}))
        p = provider("openai", fake.url)
        streamed = await collect(p, chat(stream=True))
        whole = await collect(p, chat(stream=False))
        await p.close()
    assert text_of(streamed) == text_of(whole) == "Turning it on."
    assert calls_of(streamed) == calls_of(whole) == [ToolCall(0, "call_b", "turn_on", LIGHT.arguments)]
    assert finish_of(streamed) == finish_of(whole) == Finish("tool_calls", Usage(20, 9, 0))


@pytest.mark.parametrize(
    ("wire", "expected"),
    [("stop", "stop"), ("length", "length"), ("tool_calls", "tool_calls"), ("content_filter", "stop")],
)
async def test_finish_reasons(wire: str, expected: str) -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="abc", tool_calls=[LIGHT] if wire == "tool_calls" else [], finish_reason=wire))
        p = provider("openai", fake.url)
        events = await collect(p)
        await p.close()
    assert finish_of(events).reason == expected


async def test_legacy_completions_stream() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text=" a time there was", finish_reason="length", completion_tokens=5))
        p = provider("openai", fake.url)
        events = await collect(p, GenerationRequest(model="a", prompt="Once upon", max_tokens=5))
        await p.close()
    assert text_of(events) == " a time there was"
    assert events[-1] == Finish("length", Usage(12, 5, 0))
    assert fake.requests[0].body["max_tokens"] == 5


async def test_sse_error_line_becomes_error_event() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="abcdefghijkl", error_after=3))
        p = provider("openai", fake.url)
        events = await collect(p)
        await p.close()
    # role chunk, two text chunks, then `data: {"error": ...}`
    assert text_of(events) == "abcdefgh"
    last = events[-1]
    assert isinstance(last, ErrorEvent)
    assert "injected mid-stream failure" in last.message
    assert last.code == "server_error" and last.status == 502
    assert not any(isinstance(e, Finish) for e in events)


async def test_invalid_tool_arguments_become_an_error_event() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="ok", tool_calls=[LIGHT], raw_arguments='{"entity_id": light}'))
        p = provider("openai", fake.url)
        events = await collect(p)
        await p.close()
    assert text_of(events) == "ok"
    assert calls_of(events) == []
    last = events[-1]
    assert isinstance(last, ErrorEvent) and last.code == "upstream_malformed" and "turn_on" in last.message


@pytest.mark.parametrize("whole", [False, True], ids=["stream", "non-stream"])
async def test_llama_cpp_timings_are_kept(whole: bool) -> None:
    # another zoe-edge (or llama.cpp's server) reports timings beside usage
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="x", whole=whole, extra={"timings": {"prompt_ms": 12.5, "predicted_ms": 40.0}}))
        p = provider("openai", fake.url)
        events = await collect(p)
        await p.close()
    assert finish_of(events).timings == Timings(prompt_ms=12.5, predicted_ms=40.0)


ROLE = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"choices":[5]}\n\n',  # a choice that is not an object
        b'data: {"choices":{"0":{}}}\n\n',  # choices that are not a list
        b"data: [1, 2]\n\n",  # a chunk that is not an object
    ],
)
async def test_unexpected_shapes_never_crash(bad: bytes) -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(frames=[ROLE, bad]), FakeReply(frames=[bad]))
        p = provider("openai", fake.url, retries=0)
        events = await collect(p)
        # after output: an ErrorEvent; before any output: a ProviderError (the router may fall back)
        assert events[0] == TextDelta("hi")
        assert isinstance(events[-1], ErrorEvent) and events[-1].code == "upstream_malformed"
        with pytest.raises(ProviderError) as info:
            await collect(p)
        assert info.value.code == "upstream_malformed" and info.value.retryable
        await p.close()


async def test_zoe_edge_style_mid_stream_error_keeps_its_code_and_status() -> None:
    error = b'data: {"error":{"message":"model busy","type":"service_unavailable","param":null,"code":"busy"}}\n\n'
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(frames=[ROLE, error]))
        p = provider("openai", fake.url)
        events = await collect(p)
        await p.close()
    assert events[-1] == ErrorEvent("test-openai: the upstream reported an error: model busy", code="busy", status=503)
