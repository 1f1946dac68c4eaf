"""The fakes speak the real wire formats: the official SDKs parse them into their own types."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from anthropic.types import Message as AnthropicMessage
from anthropic.types import TextBlock, ToolUseBlock
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.common import FakeReply, FakeToolCall
from tests.fakes.openai_fake import OpenAIFake

WEATHER = FakeToolCall("get_weather", {"city": "Zürich", "days": 3, "units": {"t": "C"}}, id="call_w1")
LIGHT = FakeToolCall("turn_on", {"entity_id": "light.kitchen"}, id="call_l2")
TOOLS_OAI = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
TOOLS_ANT = [{"name": "get_weather", "input_schema": {"type": "object"}}]


# --- OpenAI ----------------------------------------------------------------------------------


async def test_openai_sdk_parses_non_stream_text() -> None:
    async with OpenAIFake(api_key="sk-test") as fake:
        fake.reply(FakeReply(text="Hi there", prompt_tokens=9, completion_tokens=2, cached_tokens=4))
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test", max_retries=0)
        out = await client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
        await client.close()
    assert isinstance(out, ChatCompletion)
    assert out.model == "gpt-x"
    assert out.choices[0].message.content == "Hi there"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (9, 2, 11)
    assert out.usage.prompt_tokens_details is not None
    assert out.usage.prompt_tokens_details.cached_tokens == 4
    assert fake.requests[0].headers["Authorization"] == "Bearer sk-test"


async def test_openai_sdk_parses_non_stream_tool_calls() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="", tool_calls=[WEATHER, LIGHT]))
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0)
        out = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS_OAI
        )  # type: ignore[call-overload]
        await client.close()
    msg = out.choices[0].message
    assert msg.content is None
    assert out.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls is not None
    assert [c.id for c in msg.tool_calls] == ["call_w1", "call_l2"]
    assert [c.function.name for c in msg.tool_calls] == ["get_weather", "turn_on"]  # type: ignore[union-attr]
    assert json.loads(msg.tool_calls[0].function.arguments) == WEATHER.arguments  # type: ignore[union-attr]


async def test_openai_sdk_parses_stream_with_fragments_and_usage() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="Sure, ", tool_calls=[WEATHER, LIGHT], args_chunk=3, completion_tokens=30))
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0)
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        await client.close()
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Sure, "
    # stitch argument fragments the way SDK users do; each call arrives in several pieces
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    fragments = 0
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "" if tc.function else "")
            if tc.function and tc.function.name:
                names[tc.index] = tc.function.name
            fragments += 1
    assert fragments > 6
    assert names == {0: "get_weather", 1: "turn_on"}
    assert json.loads(args[0]) == WEATHER.arguments
    assert json.loads(args[1]) == LIGHT.arguments
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 30


async def test_openai_sdk_stream_helper_assembles_tool_calls() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="", tool_calls=[WEATHER], args_chunk=2))
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0)
        async with client.beta.chat.completions.stream(
            model="m", messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_completion()
        await client.close()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].id == "call_w1" and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == WEATHER.arguments


async def test_openai_sdk_sees_injected_errors() -> None:
    async with OpenAIFake() as fake:
        fake.fail(1, 429, retry_after="1", message="slow down")
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        await client.close()
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert "slow down" in info.value.message
    assert info.value.response.headers["retry-after"] == "1"


# --- Anthropic -------------------------------------------------------------------------------


async def test_anthropic_sdk_parses_non_stream_text_and_tool_use() -> None:
    async with AnthropicFake(api_key="ak-test") as fake:
        fake.reply(FakeReply(text="Checking.", tool_calls=[WEATHER], prompt_tokens=20, completion_tokens=8))
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="ak-test", max_retries=0)
        out = await client.messages.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}], tools=TOOLS_ANT
        )  # type: ignore[arg-type]
        await client.close()
    assert isinstance(out, AnthropicMessage)
    assert out.model == "claude-x" and out.role == "assistant"
    assert isinstance(out.content[0], TextBlock) and out.content[0].text == "Checking."
    block = out.content[1]
    assert isinstance(block, ToolUseBlock)
    assert (block.id, block.name, block.input) == ("call_w1", "get_weather", WEATHER.arguments)
    assert out.stop_reason == "tool_use"
    assert (out.usage.input_tokens, out.usage.output_tokens) == (20, 8)
    headers = fake.requests[0].headers
    assert "ak-test" in (headers.get("x-api-key"), headers.get("Authorization", "").removeprefix("Bearer "))
    assert headers["anthropic-version"]


async def test_anthropic_sdk_stream_final_message_assembles_tool_use() -> None:
    async with AnthropicFake() as fake:
        fake.reply(FakeReply(text="On it.", tool_calls=[WEATHER, LIGHT], args_chunk=3, completion_tokens=40))
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="x", max_retries=0)
        seen: list[str] = []
        async with client.messages.stream(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for event in stream:
                seen.append(event.type)
            final = await stream.get_final_message()
        await client.close()
    assert seen[0] == "message_start" and seen[-1] == "message_stop"
    assert "input_json" in seen and "text" in seen  # the SDK's derived events from the deltas
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 40 and final.usage.input_tokens == 12
    assert isinstance(final.content[0], TextBlock) and final.content[0].text == "On it."
    uses = [b for b in final.content if isinstance(b, ToolUseBlock)]
    assert [(b.id, b.name, b.input) for b in uses] == [
        ("call_w1", "get_weather", WEATHER.arguments),
        ("call_l2", "turn_on", LIGHT.arguments),
    ]


@pytest.mark.parametrize("reason", ["end_turn", "max_tokens", "stop_sequence"])
async def test_anthropic_sdk_stream_stop_reasons(reason: str) -> None:
    async with AnthropicFake() as fake:
        fake.reply(FakeReply(text="abc", finish_reason=reason))
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="x", max_retries=0)
        async with client.messages.stream(
            model="c", max_tokens=5, stop_sequences=["##"], messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_message()
        await client.close()
    assert final.stop_reason == reason
    assert final.stop_sequence == ("##" if reason == "stop_sequence" else None)


async def test_anthropic_sdk_sees_overloaded_and_mid_stream_error() -> None:
    async with AnthropicFake() as fake:
        fake.fail(1, 529)
        fake.reply(FakeReply(text="abcdefgh", error_after=3))
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="x", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 529
        assert isinstance(info.value.body, dict) and info.value.body["error"]["type"] == "overloaded_error"
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            async with client.messages.stream(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                async for _ in stream:
                    pass
        await client.close()
