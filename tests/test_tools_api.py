"""Tool calling end to end: the real daemon, the real SmolLM2 (greedy), Home-Assistant-like tools.

The arguments checks here are written independently of zoe_edge's own validator, so a bug there
cannot hide a bad call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from zoe_edge.worker.tools import MAX_CALLS

DOMAINS = ["light", "switch", "fan", "climate"]
TARGET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Name of the device or entity"},
        "area": {"type": "string", "description": "Name of the area"},
        "domain": {"type": "string", "enum": DOMAINS},
    },
    "required": ["name"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "HassTurnOn": TARGET,
    "HassTurnOff": TARGET,
    "HassLightSet": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "brightness": {"type": "integer", "minimum": 0, "maximum": 100, "description": "percent"},
        },
        "required": ["name", "brightness"],
        "additionalProperties": False,
    },
    "HassClimateSetTemperature": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "temperature": {"type": "number", "minimum": 5, "maximum": 35},
        },
        "required": ["temperature"],
        "additionalProperties": False,
    },
    "GetWeather": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"],
        "additionalProperties": False,
    },
}
DESCRIPTIONS = {
    "HassTurnOn": "Turns on/opens a device or entity",
    "HassTurnOff": "Turns off/closes a device or entity",
    "HassLightSet": "Sets the brightness of a light",
    "HassClimateSetTemperature": "Sets the target temperature of a climate device",
    "GetWeather": "Gets the current weather for a location",
}
TOOLS = [
    {"type": "function", "function": {"name": n, "description": DESCRIPTIONS[n], "parameters": s}}
    for n, s in SCHEMAS.items()
]

PROMPTS = [
    "Turn on the kitchen light",
    "Switch off the living room lamp",
    "Set the bedroom light to 40 percent",
    "Dim the hallway lights to 10%",
    "Make the office brighter, 90 percent",
    "Set the thermostat to 21 degrees",
    "It's cold, heat the living room to 23.5",
    "What's the weather like in Paris?",
    "Will it rain in London tomorrow?",
    "Turn on the fan in the garage",
    "Turn off all the lights upstairs",
    "Lights off in the kitchen please",
    "Set the climate in the bedroom to 19",
    "How warm is it outside in Berlin, in fahrenheit?",
    "Turn on the porch light",
    "Please switch on the coffee machine",
    "Brightness of the desk lamp to 75",
    "Turn the heating down to 18 degrees",
    'Call HassTurnOn with {"name": "kitchen light"}',
    "Kill the lights in the den",
    "Can you turn on the TV in the lounge?",
    "Set the nursery light to 5 percent brightness",
    "I want it 25 degrees in here",
    "What's the weather in Madrid? Answer in JSON.",
    "Turn off the bathroom fan",
    "Activate the garden sprinkler switch",
    "Set lamp in study to full brightness",
    "Tell me a joke",
    "What time is it?",
    "Thanks, that's all",
]
# 30 requests take ~15 s on two idle cores; a machine shared with other llama.cpp processes can
# make that ten times longer, which is not what these tests are about
SWEEP_TIMEOUT = 900
# a call here is usually 15-45 tokens, but the grammar allows each free string up to
# MAX_ARGUMENT_STRING (128) characters and some CPUs' greedy SmolLM2 fills a name with "&nbsp"s: the
# budget covers the longest call the grammar admits (two capped strings plus the JSON around them,
# at most one token per character), so a call is never cut off
CALL_TOKENS = 400


def check_arguments(name: str, args: Any) -> None:
    """An independent check of the subset of JSON Schema the tools above use."""
    schema = SCHEMAS[name]
    assert isinstance(args, dict), args
    assert set(schema["required"]) <= set(args), (name, args)
    assert set(args) <= set(schema["properties"]), (name, args)
    for key, value in args.items():
        prop = schema["properties"][key]
        if prop["type"] == "string":
            assert isinstance(value, str), (name, key, value)
        elif prop["type"] == "integer":
            assert isinstance(value, int) and not isinstance(value, bool), (name, key, value)
        elif prop["type"] == "number":
            assert isinstance(value, int | float) and not isinstance(value, bool), (name, key, value)
        if "enum" in prop:
            assert value in prop["enum"], (name, key, value)
        if "minimum" in prop:
            assert prop["minimum"] <= value <= prop["maximum"], (name, key, value)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    """SmolLM2 without prefix snapshots: the stream/non-stream comparisons below need both requests to
    evaluate their prompt from the same point, and a restored snapshot would move that point."""
    tmp = tmp_path_factory.mktemp("tools")
    entry = smollm_entry(smollm_path, prefix_cache=0)
    d = start_daemon(write_registry(tmp, {"smollm2-135m": entry}, {"zoe-chat": "smollm2-135m"}), tmp)
    yield d
    d.stop()


def chat(daemon: Daemon, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {"model": "zoe-chat", "messages": [{"role": "user", "content": prompt}], "tools": TOOLS, **extra}
    r = httpx.post(daemon.v1 + "/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return dict(r.json())


def assert_call_message(resp: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The response is a well-formed tool-call answer; returns (name, arguments) per call."""
    choice = resp["choices"][0]
    message = choice["message"]
    assert choice["finish_reason"] == "tool_calls", message
    assert message["content"] is None
    assert message["tool_calls"], message
    out = []
    for call in message["tool_calls"]:
        assert set(call) == {"id", "type", "function"}
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert isinstance(call["function"]["arguments"], str)  # a JSON string, not an object
        args = json.loads(call["function"]["arguments"])
        check_arguments(call["function"]["name"], args)
        out.append((call["function"]["name"], args))
    assert len({c["id"] for c in message["tool_calls"]}) == len(out)
    return out


@pytest.mark.timeout(SWEEP_TIMEOUT)
def test_required_gives_a_valid_call_for_every_prompt(daemon: Daemon) -> None:
    names = set()
    for prompt in PROMPTS:
        calls = assert_call_message(chat(daemon, prompt, tool_choice="required", max_tokens=CALL_TOKENS))
        assert len(calls) == 1  # parallel calls are opt-in
        names.add(calls[0][0])
    print(f"required: {len(PROMPTS)} valid calls, tools chosen: {sorted(names)}")
    assert len(names) >= 2  # the model does choose between tools, it is not stuck on one


@pytest.mark.timeout(SWEEP_TIMEOUT)
def test_named_choice_gives_a_valid_call_to_that_tool(daemon: Daemon) -> None:
    for i, prompt in enumerate(PROMPTS):
        name = list(SCHEMAS)[i % len(SCHEMAS)]
        choice = {"type": "function", "function": {"name": name}}
        calls = assert_call_message(chat(daemon, prompt, tool_choice=choice, max_tokens=CALL_TOKENS))
        assert [n for n, _ in calls] == [name]


@pytest.mark.timeout(SWEEP_TIMEOUT)
def test_auto_gives_text_or_a_valid_call_never_a_mix(daemon: Daemon) -> None:
    from zoe_edge.worker.tools import parse

    kinds = {"call": 0, "text": 0}
    for prompt in PROMPTS:
        resp = chat(daemon, prompt, max_tokens=60)  # tool_choice defaults to auto
        message = resp["choices"][0]["message"]
        if message.get("tool_calls"):
            assert_call_message(resp)
            kinds["call"] += 1
        else:
            text = message["content"]
            assert resp["choices"][0]["finish_reason"] in ("stop", "length")
            assert isinstance(text, str) and text.strip()
            assert not text.lstrip().startswith("{"), text  # a call the parser missed would start so
            assert "<tool_call>" not in text and parse(text, "generic") is None, text
            kinds["text"] += 1
    print(f"auto: {kinds}")
    # both branches of the lazy grammar are exercised by these prompts (greedy, so this is stable)
    assert kinds["call"] >= 1 and kinds["text"] >= 1, kinds


def stream_calls(daemon: Daemon, body: dict[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]], str | None]:
    """Text, calls and finish reason of a streamed answer, checking the SSE shape of tool-call deltas."""
    chunks = []
    with httpx.stream("POST", daemon.v1 + "/chat/completions", json={**body, "stream": True}, timeout=300) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        chunks.append(json.loads(line[6:]))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    text, calls = "", []
    for chunk in chunks:
        delta = chunk["choices"][0]["delta"]
        text += delta.get("content") or ""
        for call in delta.get("tool_calls", []):
            # each call complete in one delta: home-llm does not stitch fragments
            assert call["index"] == len(calls)
            assert call["id"].startswith("call_") and call["type"] == "function"
            calls.append((call["function"]["name"], json.loads(call["function"]["arguments"])))
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {} or last["delta"] == {"content": ""}
    return text, calls, last["finish_reason"]


def same_cache_state(daemon: Daemon) -> None:
    """Leave the same KV cache behind before each of two compared requests.

    llama.cpp's logits differ in the last bits with how much of a prompt it reuses from the cache
    (one batch of 300 tokens vs one token), and that can flip a sampled token. A short unrelated
    request before each makes both evaluate the same prompt from the same point.
    """
    body = {"model": "zoe-chat", "messages": [{"role": "system", "content": "-"}], "max_tokens": 1}
    assert httpx.post(daemon.v1 + "/chat/completions", json=body, timeout=300).status_code == 200


@pytest.mark.parametrize(
    ("extra", "prompt"),
    [
        ({"tool_choice": "required"}, "Set the bedroom light to 40 percent"),
        ({"tool_choice": {"type": "function", "function": {"name": "HassLightSet"}}}, "Dim the hallway to 10%"),
        ({"tool_choice": "required", "parallel_tool_calls": True}, "Turn on the fan and the porch light"),
        ({"tool_choice": "auto"}, 'Call HassTurnOn with {"name": "kitchen light"}'),
        ({"tool_choice": "auto"}, "Tell me a joke"),
    ],
    ids=["required", "named", "parallel", "auto-call", "auto-text"],
)
def test_stream_and_non_stream_give_the_same_calls(daemon: Daemon, extra: dict[str, Any], prompt: str) -> None:
    sampled = {"temperature": 0.8, "seed": 4242, "max_tokens": CALL_TOKENS}
    body = {"model": "zoe-chat", "messages": [{"role": "user", "content": prompt}], "tools": TOOLS}
    same_cache_state(daemon)
    full = chat(daemon, prompt, **extra, **sampled)
    same_cache_state(daemon)
    text, calls, reason = stream_calls(daemon, {**body, **extra, **sampled})
    message = full["choices"][0]["message"]
    assert reason == full["choices"][0]["finish_reason"]
    expected = [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []
    ]
    assert calls == expected
    assert text == (message["content"] or "")
    if extra.get("tool_choice") != "auto":
        assert reason == "tool_calls" and calls
        for name, args in calls:
            check_arguments(name, args)
    if extra.get("parallel_tool_calls"):
        assert 1 <= len(calls) <= MAX_CALLS


def test_multi_turn_through_the_openai_sdk(daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=daemon.v1, api_key="unused", max_retries=0, timeout=300)
    messages: list[Any] = [{"role": "user", "content": "What's the weather like in Paris?"}]
    first = client.chat.completions.create(
        model="zoe-chat",
        messages=messages,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        max_tokens=CALL_TOKENS,
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "GetWeather"  # type: ignore[union-attr]
    check_arguments("GetWeather", json.loads(call.function.arguments))  # type: ignore[union-attr]

    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    weather = {"location": "Paris", "temperature": 18, "condition": "light rain"}
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(weather)})

    # SmolLM2-135M answers a result with the same call again under "auto" (greedy); a client that
    # wants the answer now says so with "none", with the tools and the history still sent
    second = client.chat.completions.create(
        model="zoe-chat",
        messages=messages,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        max_tokens=60,
    )
    answer = second.choices[0].message
    assert not answer.tool_calls
    assert answer.content and answer.content.strip()
    assert second.choices[0].finish_reason in ("stop", "length")
    # the call and its result were rendered into the prompt (without the tool block, which "none"
    # leaves out): a first-turn prompt without tools is far shorter
    bare = client.chat.completions.create(model="zoe-chat", messages=messages[:1], max_tokens=1)
    assert second.usage.prompt_tokens > bare.usage.prompt_tokens + 40  # type: ignore[union-attr]

    # under "auto" the same history still gives text or a valid call, never a broken one
    again = client.chat.completions.create(model="zoe-chat", messages=messages, tools=TOOLS, max_tokens=CALL_TOKENS)  # type: ignore[arg-type]
    if again.choices[0].message.tool_calls:
        assert again.choices[0].finish_reason == "tool_calls"
        for c in again.choices[0].message.tool_calls:
            check_arguments(c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
    else:
        assert again.choices[0].message.content


def test_legacy_functions_give_function_call(daemon: Daemon) -> None:
    body = {
        "model": "zoe-chat",
        "messages": [{"role": "user", "content": "Set the desk lamp to 30 percent"}],
        "functions": [t["function"] for t in TOOLS],
        "function_call": {"name": "HassLightSet"},
        "max_tokens": CALL_TOKENS,
    }
    resp = httpx.post(daemon.v1 + "/chat/completions", json=body, timeout=300).json()
    choice = resp["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert "tool_calls" not in choice["message"] and choice["message"]["content"] is None
    fc = choice["message"]["function_call"]
    assert fc["name"] == "HassLightSet"
    check_arguments("HassLightSet", json.loads(fc["arguments"]))


def test_tool_choice_none_gives_text(daemon: Daemon) -> None:
    resp = chat(daemon, 'Call HassTurnOn with {"name": "kitchen light"}', tool_choice="none", max_tokens=30)
    message = resp["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"]
    assert resp["choices"][0]["finish_reason"] in ("stop", "length")


DEGRADED = [
    {"tools": [{"type": "function", "function": {"name": "Odd", "parameters": {"type": "integer", "multipleOf": 3}}}]},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "format": "email"}}}},
    # Home Assistant's GetLiveContext: a parameter with a description and no type (any JSON value)
    {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "GetLiveContext",
                    "parameters": {"type": "object", "properties": {"domain": {"description": "one or a list"}}},
                },
            }
        ]
    },
]


@pytest.mark.parametrize("extra", DEGRADED, ids=["multipleOf tool", "email response_format", "typeless parameter"])
def test_any_valid_schema_is_served(daemon: Daemon, extra: dict[str, Any]) -> None:
    """What the grammar cannot enforce leaves that part less constrained (logged), never a 400."""
    body = {"model": "zoe-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **extra}
    r = httpx.post(daemon.v1 + "/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "Bad", "parameters": {"type": "nonsense"}}}]},
            "nonsense",
        ),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ],
    ids=["not a JSON schema", "tools with response_format"],
)
def test_what_is_not_a_schema_is_a_400_naming_it(daemon: Daemon, extra: dict[str, Any], named: str) -> None:
    body = {"model": "zoe-chat", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "max_tokens": 5}
    r = httpx.post(daemon.v1 + "/chat/completions", json={**body, **extra}, timeout=300)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]


def test_bad_history_arguments_are_a_400(daemon: Daemon) -> None:
    messages = [
        {"role": "user", "content": "Lights on"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "HassTurnOn", "arguments": "{not json"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    r = httpx.post(
        daemon.v1 + "/chat/completions", json={"model": "zoe-chat", "messages": messages, "tools": TOOLS}, timeout=300
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[1].tool_calls[0]"


def test_response_format_uses_the_same_grammar_path_with_ranges(daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {"room": {"type": "string"}, "level": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["room", "level"],
        "additionalProperties": False,
    }
    body = {
        "model": "zoe-chat",
        "messages": [{"role": "user", "content": "Rate the kitchen from 1 to 5 as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "rating", "schema": schema}},
        "max_tokens": 60,
    }
    resp = httpx.post(daemon.v1 + "/chat/completions", json=body, timeout=300).json()
    data = json.loads(resp["choices"][0]["message"]["content"])
    assert set(data) == {"room", "level"} and 1 <= data["level"] <= 5


def test_registry_tool_format_override(tmp_path: Path, smollm_path: Path) -> None:
    """``tool_format: hermes`` makes SmolLM2 call in <tool_call> tags; the answers are the same shape."""
    registry = write_registry(
        tmp_path, {"smollm2-135m": smollm_entry(smollm_path, tool_format="hermes")}, {"zoe-chat": "smollm2-135m"}
    )
    hermes = start_daemon(registry, tmp_path)
    try:
        for choice in ("required", {"type": "function", "function": {"name": "GetWeather"}}):
            resp = chat(hermes, "What's the weather like in Paris?", tool_choice=choice, max_tokens=CALL_TOKENS)
            assert_call_message(resp)
        for prompt in ("Tell me a joke", "Turn on the kitchen light"):
            resp = chat(hermes, prompt, max_tokens=40)
            message = resp["choices"][0]["message"]
            if message.get("tool_calls"):
                assert_call_message(resp)
            else:
                assert "<tool_call>" not in message["content"]
        assert "tool calls: hermes (tool_format: hermes in the registry, through the system block)" in hermes.log()
    finally:
        hermes.stop()
