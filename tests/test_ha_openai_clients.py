"""Home Assistant's OpenAI custom integrations, request for request, through the real ``openai`` SDK
against a real daemon serving SmolLM2, with Home Assistant 2026.11's own Assist tools and prompt
(tests/fixtures/home-assistant/assist-first-turn.request.json).

What each integration sends, read from its source:

* **Extended OpenAI Conversation** (jekalmin/extended_openai_conversation 2.0.0,
  ``conversation.py`` ``query``/``execute_tool_calls``, defaults in ``const.py``): non-streamed
  ``chat.completions.create(model, messages, top_p=1, temperature=0.5, user=<conversation id>,
  max_tokens=150, tools=[{"type": "function", "function": spec}], tool_choice="auto")``. It runs each
  returned call (``json.loads(tool.function.arguments)``), appends
  ``message.model_dump(exclude_none=True)`` and one ``{"tool_call_id", "role": "tool", "name",
  "content": str(result)}`` per call, and asks again; the repeat has ``tool_choice="none"`` once
  ``max_function_calls_per_conversation`` (default 1) calls were made. ``finish_reason == "length"``
  raises ``TokenLengthExceededError``; ``usage.total_tokens`` is compared with a 13,000-token
  threshold. Its default function is ``execute_services`` (below), not Home Assistant's intents.
* **home-llm** (acon96/home-llm 0.4.6, ``backends/generic_openai.py``, ``utils.py``, ``ai_task.py``):
  raw aiohttp POST to ``/v1/chat/completions`` with ``stream: true, max_tokens: 512,
  temperature: 0.1, top_p: 1``, user content as a list of text parts, the tools sorted by name, no
  ``tool_choice``. Each SSE line: ``data: `` stripped, ``[DONE]`` anywhere ends it, else
  ``json.loads``; text from ``delta.content``, calls from ``[c["function"] for c in
  delta.tool_calls]`` per chunk (never stitched across chunks). Tool results go back as
  ``{"role": "tool", "content": json.dumps(result), "tool_call_id"}``. ``response_format:
  {"type": "json_schema", "json_schema": {"name": "ha_task", "schema": ..., "strict": true}}`` is
  added for an AI Task with a structure (``ai_task.py``, extraction method "structure").
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2  # the http client openai 3.x is built on
import jsonschema_rs
import openai
import pytest
import yaml

from tests.conftest import Daemon

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "home-assistant"
FIRST_TURN = json.loads((FIXTURES / "assist-first-turn.request.json").read_text())["body"]
HA_SYSTEM: str = FIRST_TURN["messages"][0]["content"]
HA_TOOLS: list[dict[str, Any]] = FIRST_TURN["tools"]  # already OpenAI's {"type": "function", ...} form
KITCHEN_LIGHT = {"name": "Kitchen light", "domain": ["light"]}

# Home Assistant 2026.11's tool results, in the envelope its captured requests show
# ({"data": ..., "error": bool}): an intent's IntentResponse (less language and card), and
# GetLiveContext's "Live Context:" YAML list
TURNED_ON = {
    "data": {
        "speech": {},
        "response_type": "action_done",
        "data": {
            "targets": [],
            "success": [{"name": "Kitchen light", "type": "entity", "id": "light.kitchen_light"}],
            "failed": [],
        },
    },
    "error": False,
}
LIVE = "Live Context: An overview of the areas and the devices in this smart home:\n" + yaml.safe_dump(
    [
        {"names": "Coffee maker", "domain": "input_boolean", "state": "off"},
        {"names": "Kitchen light", "domain": "light", "state": "on", "areas": "Kitchen"},
    ]
)

# Extended OpenAI Conversation's DEFAULT_CONF_FUNCTIONS[0]["spec"] and DEFAULT_PROMPT (const.py),
# the prompt rendered for the fixture house
EXECUTE_SERVICES: dict[str, Any] = {
    "name": "execute_services",
    "description": "Use this function to execute service of devices in Home Assistant.",
    "parameters": {
        "type": "object",
        "properties": {
            "list": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "domain": {"type": "string", "description": "The domain of the service"},
                        "service": {"type": "string", "description": "The service to be called"},
                        "service_data": {
                            "type": "object",
                            "description": "The service data object to indicate what to control.",
                            "properties": {
                                "entity_id": {
                                    "type": "string",
                                    "description": "The entity_id retrieved from available devices. It must start "
                                    "with domain, followed by dot character.",
                                }
                            },
                            "required": ["entity_id"],
                        },
                    },
                    "required": ["domain", "service", "service_data"],
                },
            }
        },
    },
}
EOC_PROMPT = """I want you to act as smart home manager of Home Assistant.
I will provide information of smart home along with a question, you will truthfully make correction or answer \
using information provided in one sentence in everyday language.

Current Time: 2026-11-12 18:04:11.402115+01:00

Available Devices:
```csv
entity_id,name,state,aliases
input_boolean.coffee_maker,Coffee maker,off,
light.kitchen_light,Kitchen light,off,
sensor.living_room_temperature,Living room temperature,21.5,
```

The current state of devices is provided in available devices.
Use execute_services function only for requested action, not for current states.
Do not execute service without user's confirmation.
Do not restate or appreciate what user says, rather make a quick inquiry.
"""
# home-llm's AI Task prompt (const.py DEFAULT_AI_TASK_PROMPT) and a structure as voluptuous_openapi
# converts one
AI_TASK_PROMPT = "You are a task-specific assistant. Follow the task instructions and return the requested data."
TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "lights_on": {"type": "integer", "description": "How many lights are on"},
        "coffee_maker_on": {"type": "boolean", "description": "Whether the coffee maker is on"},
    },
    "required": ["lights_on", "coffee_maker_on"],
}

F = TypeVar("F", bound=Callable[..., None])


# each turn with HA's ~1,400-token prompt: ~10 s on an idle 2-core machine, a minute while others run
def expensive(test: F) -> F:
    marked: F = pytest.mark.model(pytest.mark.timeout(600)(test))
    return marked


class Recorder(httpx2.BaseTransport):
    """Keeps every response body the SDK reads, so one stream is parsed both by the SDK and as home-llm does."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.bodies: list[bytearray] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        stream = response.stream
        assert isinstance(stream, httpx2.SyncByteStream)
        inner: httpx2.SyncByteStream = stream
        body = bytearray()
        self.bodies.append(body)

        class Tee(httpx2.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in inner:
                    body.extend(chunk)
                    yield chunk

            def close(self) -> None:
                inner.close()

        return httpx2.Response(
            response.status_code, headers=response.headers, stream=Tee(), extensions=response.extensions
        )

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


def client(d: Daemon, transport: httpx2.BaseTransport | None = None) -> openai.OpenAI:
    http = httpx2.Client(transport=transport, timeout=600) if transport is not None else None
    return openai.OpenAI(base_url=d.v1, api_key="sk-ha", max_retries=0, timeout=600, http_client=http)


def ha_messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": HA_SYSTEM}, {"role": "user", "content": text}]


def eoc_create(c: openai.OpenAI, messages: list[dict[str, Any]], tools: list[dict[str, Any]], choice: str) -> Any:
    """Extended OpenAI Conversation's ``query`` call (gpt-4o-mini's names differ; a local model's get max_tokens)."""
    completions: Any = c.chat.completions  # the bodies are plain dicts, as the integrations build them
    return completions.with_raw_response.create(
        model="auto",
        messages=messages,
        top_p=1,
        temperature=0.5,
        user="01JCXGZ8K1QF6ZV0M4ZS7W1H2D",
        max_tokens=150,
        tools=tools,
        tool_choice=choice,
    )


def home_llm_lines(raw: bytes) -> tuple[str, list[dict[str, Any]], list[str]]:
    """generic_openai.py ``anext_token`` + ``_extract_response``, line for line: text, calls, chunk ids."""
    text, calls, ids = "", [], []
    for line_bytes in raw.splitlines():
        raw_line = line_bytes.decode("utf-8").strip()
        assert not raw_line.startswith("error: "), raw_line
        chunk = raw_line.removeprefix("data: ")
        if "[DONE]" in chunk:
            break
        if not chunk.strip():
            continue
        data = json.loads(chunk)
        assert data.get("choices"), f"home-llm warns 'Response missing or empty choices': {data}"
        assert data["object"] == "chat.completion.chunk"
        ids.append(data["id"])
        delta = data["choices"][0]["delta"]
        text += delta.get("content", "") or ""
        if delta.get("tool_calls") is not None:
            calls += [call["function"] for call in delta["tool_calls"]]
    return text, calls, ids


# --- Extended OpenAI Conversation -------------------------------------------------------------


@expensive
def test_extended_openai_command_then_result(ha: Daemon) -> None:
    """A command: one call naming the kitchen light; the result back with its tool_call_id: one sentence on it."""
    c = client(ha)
    messages = ha_messages("Turn on the kitchen light")
    started = time.monotonic()
    raw = eoc_create(c, messages, HA_TOOLS, "auto")
    first = raw.parse()
    took = time.monotonic() - started
    choice = first.choices[0]
    assert raw.headers["x-zoe-turn"].startswith("command"), raw.headers
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(t.type, t.function.name) for t in calls] == [("function", "intent__HassTurnOn")]
    assert isinstance(calls[0].function.arguments, str)  # EOC json.loads it
    assert json.loads(calls[0].function.arguments) == KITCHEN_LIGHT
    assert calls[0].id
    assert first.usage is not None and first.usage.total_tokens > 0, took
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens

    # execute_tool_calls: the message as the SDK dumps it, then one tool message per call
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append(
        {"tool_call_id": calls[0].id, "role": "tool", "name": calls[0].function.name, "content": json.dumps(TURNED_ON)}
    )
    # tool_choice "auto": max_function_calls_per_conversation raised above its default 1 (see the next test)
    raw = eoc_create(c, messages, HA_TOOLS, "auto")
    final = raw.parse()
    assert raw.headers["x-zoe-turn"] == "answer from the tool result"
    assert final.choices[0].message.tool_calls is None and final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "Turned on Kitchen light."
    assert final.usage is not None  # EOC reads usage.total_tokens on every response


def after_turn_on(call_id: str = "call_8d1f2b0c4e6a4f9b9b1d2c3e") -> list[dict[str, Any]]:
    return [
        *ha_messages("Turn on the kitchen light"),
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "intent__HassTurnOn", "arguments": json.dumps(KITCHEN_LIGHT)},
                }
            ],
        },
        {"tool_call_id": call_id, "role": "tool", "name": "intent__HassTurnOn", "content": json.dumps(TURNED_ON)},
    ]


@expensive
def test_extended_openai_default_second_request_is_answered_from_the_result(ha: Daemon) -> None:
    raw = eoc_create(client(ha), after_turn_on(), HA_TOOLS, "none")
    final = raw.parse()
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].finish_reason != "length"  # EOC raises TokenLengthExceededError on it
    assert final.choices[0].message.content == "Turned on Kitchen light."


@expensive
def test_extended_openai_state_question_loop(ha: Daemon) -> None:
    """A state question: GetLiveContext first, then the answer from HA's live context result."""
    c = client(ha)
    messages = ha_messages("Is the coffee maker on?")
    raw = eoc_create(c, messages, HA_TOOLS, "auto")
    first = raw.parse()
    calls = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls", first.choices[0]
    assert [t.function.name for t in calls] == ["homeassistant__GetLiveContext"]
    assert json.loads(calls[0].function.arguments) == {"name": "Coffee maker", "domain": ["input_boolean"]}
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    live = json.dumps({"data": {"success": True, "result": LIVE}, "error": False})
    messages.append({"tool_call_id": calls[0].id, "role": "tool", "name": calls[0].function.name, "content": live})
    final = eoc_create(c, messages, HA_TOOLS, "auto").parse()
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content == "No, Coffee maker is off."


@expensive  # two turns, up to 150 sampled tokens each
def test_extended_openai_default_execute_services(ha: Daemon) -> None:
    """EOC's own function and prompt: not HA's tools, so the planner leaves it alone. Served without
    error; a call it returns validates against the function's schema; the repeat with tool_choice
    'none' makes no call. SmolLM2 at EOC's temperature 0.5 varies, so nothing more is asserted."""
    c = client(ha)
    tools = [{"type": "function", "function": EXECUTE_SERVICES}]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": EOC_PROMPT},
        {"role": "user", "content": "Turn on the kitchen light"},
    ]
    raw = eoc_create(c, messages, tools, "auto")
    first = raw.parse()
    assert "x-zoe-turn" not in raw.headers, raw.headers
    choice = first.choices[0]
    assert choice.finish_reason in ("tool_calls", "stop", "length")
    assert first.usage is not None and first.usage.total_tokens > 0
    calls = choice.message.tool_calls or []
    assert (choice.finish_reason == "tool_calls") == bool(calls)
    validator = jsonschema_rs.validator_for(EXECUTE_SERVICES["parameters"])
    for call in calls:
        assert call.function.name == "execute_services"
        validator.validate(json.loads(call.function.arguments))
    if not calls:
        return
    messages.append(choice.message.model_dump(exclude_none=True))
    for call in calls:
        # NativeFunctionExecutor.execute_service returns [{"success": True}]; EOC sends str() of it
        messages.append(
            {"tool_call_id": call.id, "role": "tool", "name": call.function.name, "content": str([{"success": True}])}
        )
    final = eoc_create(c, messages, tools, "none").parse()
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].finish_reason in ("stop", "length")


# --- home-llm (generic OpenAI backend) --------------------------------------------------------


def home_llm_body(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": "auto",
        "stream": True,
        "max_tokens": 512,
        "temperature": 0.1,
        "top_p": 1,
        "messages": messages,
        "tools": sorted(copy.deepcopy(HA_TOOLS), key=lambda t: t["function"]["name"]),
    }


def stream_both_ways(
    d: Daemon, recorder: Recorder, body: dict[str, Any]
) -> tuple[str, list[Any], str | None, tuple[str, list[dict[str, Any]], list[str]]]:
    """The SDK's view of one stream (text, tool call deltas, finish reason) and home-llm's of the same bytes."""
    text, finish, ids = "", None, set()
    deltas: list[Any] = []
    completions: Any = client(d, recorder).chat.completions
    stream = completions.create(**body)
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        ids.add(chunk.id)
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        deltas += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert len(ids) == 1, ids  # every chunk of one completion carries its id
    (raw,) = recorder.bodies
    parsed = home_llm_lines(bytes(raw))
    assert set(parsed[2]) == ids
    return text, deltas, finish, parsed


@expensive
def test_home_llm_streamed_command_then_result(ha: Daemon, recorder: Recorder) -> None:
    """Each call arrives whole in one delta (home-llm reads each chunk's calls alone); the result is then
    answered in words, streamed, with no call."""
    user = {"role": "user", "content": [{"type": "text", "text": "Turn on the kitchen light"}]}
    body = home_llm_body([{"role": "system", "content": HA_SYSTEM}, user])
    text, deltas, finish, (hl_text, hl_calls, _) = stream_both_ways(ha, recorder, body)
    assert finish == "tool_calls" and text == "" == hl_text
    assert [(d.index, d.function.name) for d in deltas] == [(0, "intent__HassTurnOn")]
    assert deltas[0].id and json.loads(deltas[0].function.arguments) == KITCHEN_LIGHT
    # home-llm's parse_raw_tool_call: {"name": str, "arguments": str | dict}, a str json.loads'ed
    assert [(c["name"], json.loads(c["arguments"])) for c in hl_calls] == [("intent__HassTurnOn", KITCHEN_LIGHT)]

    # get_oai_formatted_messages: the assistant turn with str(content) (None when only a call came),
    # arguments json.dumps'ed, the result json.dumps'ed with its tool_call_id and no name
    call_id = deltas[0].id
    body["messages"] += [
        {
            "role": "assistant",
            "content": "None",
            "tool_calls": [
                {
                    "type": "function",
                    "id": call_id,
                    "function": {"arguments": json.dumps(KITCHEN_LIGHT), "name": "intent__HassTurnOn"},
                }
            ],
        },
        {"role": "tool", "content": json.dumps(TURNED_ON), "tool_call_id": call_id},
    ]
    recorder.bodies.clear()
    text, deltas, finish, (hl_text, hl_calls, _) = stream_both_ways(ha, recorder, body)
    assert deltas == [] == hl_calls and finish == "stop"
    assert text == hl_text == "Turned on Kitchen light."


def test_home_llm_ai_task_structured_output(ha: Daemon, recorder: Recorder) -> None:
    """An AI Task with a structure: streamed, response_format json_schema "ha_task" strict; the text is
    JSON that validates against the schema, and json.loads (home-llm's extraction) takes it whole."""
    body = {
        "model": "auto",
        "stream": True,
        "max_tokens": 512,
        "temperature": 0.1,
        "top_p": 1,
        "messages": [
            {"role": "system", "content": AI_TASK_PROMPT},
            {
                "role": "user",
                "content": [{"type": "text", "text": "How many lights are on, and is the coffee maker on?"}],
            },
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "ha_task", "schema": TASK_SCHEMA, "strict": True},
        },
    }
    text, deltas, finish, (hl_text, hl_calls, _) = stream_both_ways(ha, recorder, body)
    assert deltas == [] == hl_calls and finish == "stop"
    assert text == hl_text
    jsonschema_rs.validator_for(TASK_SCHEMA).validate(json.loads(text.strip()))
