"""The Anthropic Messages front driven by the official ``anthropic`` SDK against the real daemon and SmolLM2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageParam, TextBlock, ToolUseBlock
from llama_cpp import Llama

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry

KEY = "sk-anthropic-test"
PROMPT: list[MessageParam] = [{"role": "user", "content": "Name three colours of the rainbow."}]
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["location"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "name": "GetWeather", "description": "Gets the current weather for a location", "input_schema": WEATHER_SCHEMA
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    """SmolLM2 behind an API key. Without prefix snapshots: a restored snapshot moves the point a prompt is
    evaluated from, and the stream/whole comparison needs both evaluated alike (as in test_tools_api)."""
    tmp = tmp_path_factory.mktemp("anthropic")
    registry = write_registry(
        tmp, {"smollm2-135m": smollm_entry(smollm_path, prefix_cache=0)}, {"zoe-chat": "smollm2-135m"}
    )
    d = start_daemon(registry, tmp, api_key=KEY)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> anthropic.Anthropic:
    # the SDK sends its key as x-api-key, never as a bearer token
    return anthropic.Anthropic(base_url=daemon.url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def vocab(smollm_path: Path) -> Llama:
    """The model's tokenizer alone, to count tokens independently of the daemon."""
    return Llama(str(smollm_path), vocab_only=True, verbose=False)


def chat_prompt_tokens(vocab: Llama, messages: list[Any]) -> int:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(vocab.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
    rendered = fmt(messages=messages)
    return len(vocab.tokenize(rendered.prompt.encode(), add_bos=False, special=True))


def text_of(message: Message) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextBlock))


def input_total(message: Message) -> int:
    """Anthropic counts cache reads apart from input_tokens; the prompt is both together."""
    u = message.usage
    return u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)


def check_weather(args: Any) -> None:
    """An independent check of the subset of JSON Schema WEATHER_SCHEMA uses."""
    assert isinstance(args, dict), args
    assert set(WEATHER_SCHEMA["required"]) <= set(args) <= set(WEATHER_SCHEMA["properties"]), args
    assert all(isinstance(v, str) for v in args.values()), args
    assert args.get("unit", "celsius") in ("celsius", "fahrenheit"), args


def test_create(client: anthropic.Anthropic, vocab: Llama) -> None:
    # this SDK has no temperature argument (newer Claude models take none); it travels as an extra field
    msg = client.messages.create(model="zoe-chat", max_tokens=30, messages=PROMPT, extra_body={"temperature": 0})
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.model == "smollm2-135m"
    assert [b.type for b in msg.content] == ["text"] and text_of(msg).strip()
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.stop_sequence is None
    assert input_total(msg) == chat_prompt_tokens(vocab, PROMPT)
    assert 0 < msg.usage.output_tokens <= 30
    assert msg._request_id  # the request-id header


def test_system_prompt_is_counted(client: anthropic.Anthropic, vocab: Llama) -> None:
    system = "You answer in one word."
    msg = client.messages.create(
        model="zoe-chat", max_tokens=4, system=[{"type": "text", "text": system}], messages=PROMPT
    )
    expected = chat_prompt_tokens(vocab, [{"role": "system", "content": system}, *PROMPT])
    assert input_total(msg) == expected


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    msg = client.messages.create(model="zoe-chat", max_tokens=6, messages=messages)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 6


def test_stream_matches_create(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": "zoe-chat", "max_tokens": 30, "messages": PROMPT, "extra_body": {"temperature": 0}
    }
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text_of(whole) == text_of(final)
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert input_total(final) == input_total(whole)
    assert final.model == whole.model and final.id.startswith("msg_")


def test_stream_wire_format(daemon: Daemon) -> None:
    body = {"model": "zoe-chat", "max_tokens": 5, "stream": True, "messages": PROMPT}
    with httpx.stream("POST", daemon.url + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [block.split("\n") for block in raw.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    for name, lines in zip(names, events, strict=True):
        assert json.loads(lines[1].removeprefix("data: "))["type"] == name
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_tool_round_trip(client: anthropic.Anthropic) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "What's the weather like in Paris?"}]
    first = client.messages.create(
        model="zoe-chat",
        max_tokens=100,
        messages=messages,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "GetWeather"},
    )
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if isinstance(b, ToolUseBlock)]
    assert len(calls) == 1 and calls[0].name == "GetWeather" and calls[0].id
    check_weather(calls[0].input)

    weather = {"location": "Paris", "temperature": 18, "condition": "light rain"}
    messages += [
        first.to_param(),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                      "content": json.dumps(weather)}]},
    ]
    # SmolLM2-135M answers a result with the same call again under "auto" (greedy, as on the OpenAI front);
    # a client that wants the answer now says so with "none", with the tools and the history still sent
    second = client.messages.create(
        model="zoe-chat", max_tokens=40, messages=messages, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert [b.type for b in second.content] == ["text"] and text_of(second).strip()
    assert second.stop_reason in ("end_turn", "max_tokens")
    # the call and its result were rendered into the prompt (without the tool block, which "none" leaves
    # out): the first turn alone without tools is far shorter
    bare = client.messages.create(model="zoe-chat", max_tokens=1, messages=messages[:1])
    assert input_total(second) > input_total(bare) + 40

    # the streamed call assembles in the SDK into the same block
    with client.messages.stream(
        model="zoe-chat", max_tokens=100, messages=messages[:1], tools=[WEATHER],
        tool_choice={"type": "tool", "name": "GetWeather"},
    ) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if isinstance(b, ToolUseBlock)]
    assert final.stop_reason == "tool_use" and [(b.name, b.input) for b in streamed] == [("GetWeather", calls[0].input)]


def test_count_tokens_matches_create(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": "zoe-chat",
        "system": "You are a weather bot.",
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [WEATHER],
    }
    counted = client.messages.count_tokens(**kwargs)
    created = client.messages.create(max_tokens=4, **kwargs)
    assert counted.input_tokens == input_total(created) > 20
    # a different prompt counts differently
    assert client.messages.count_tokens(model="zoe-chat", messages=PROMPT).input_tokens < counted.input_tokens


def test_auth(daemon: Daemon) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic.Anthropic(base_url=daemon.url, api_key="wrong", max_retries=0).messages.create(
            model="zoe-chat", max_tokens=2, messages=PROMPT
        )
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    body = {"model": "zoe-chat", "max_tokens": 2, "messages": PROMPT}
    assert httpx.post(daemon.url + "/v1/messages", json=body, timeout=120).status_code == 401
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(daemon.url + "/v1/messages", json=body, headers=bearer, timeout=120).status_code == 200


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=2, messages=PROMPT)
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]
    assert info.value.request_id == body["request_id"]


def test_missing_max_tokens_is_a_bad_request(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", body={"model": "zoe-chat", "messages": PROMPT}, cast_to=Message)
    body: Any = info.value.body
    assert body["error"]["type"] == "invalid_request_error" and "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="zoe-chat", max_tokens=2, messages=PROMPT, extra_body={"temperature": 3})
