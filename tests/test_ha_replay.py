"""Home Assistant's captured requests (tests/fixtures/home-assistant) replayed through the real
``ollama`` client against a real daemon serving SmolLM2: the bodies exactly as HA 2026.11 sent them,
then the same bodies with other utterances, and the tool loop HA runs, with a house of fixture states."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import yaml

from tests.conftest import Daemon

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "home-assistant"


def captured(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.request.json").read_text())["body"])


async def chat(d: Daemon, body: dict[str, Any]) -> tuple[str, list[Any]]:
    """One streamed /api/chat as HA's integration sends it: the text and the tool calls."""
    c = ollama.AsyncClient(host=d.url, timeout=180)
    args = {k: v for k, v in body.items() if k in ("model", "messages", "tools", "options", "keep_alive", "think")}
    stream = await c.chat(stream=True, **args)
    text, calls = "", []
    async for part in stream:
        text += part.message.content or ""
        calls += part.message.tool_calls or []
    return text, calls


@pytest.mark.parametrize("fixture", ["assist-first-turn", "assist-after-tool-result", "chat-without-assist"])
def test_captured_requests_are_served_not_refused(ha: Daemon, fixture: str) -> None:
    """The bodies HA sent; the first two carry the typeless GetLiveContext `domain` that used to be a 400."""
    r = httpx.post(ha.url + "/api/chat", json=captured(fixture), timeout=180)
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert lines[-1]["done"] is True and not any("error" in line for line in lines)
    assert r.headers["x-zoe-served-by"] == "local:smollm2-135m"


def with_utterance(text: str) -> dict[str, Any]:
    body = copy.deepcopy(captured("assist-first-turn"))
    body["messages"][-1]["content"] = text
    return body


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        ("Turn on the kitchen light", "intent__HassTurnOn", {"name": "Kitchen light", "domain": ["light"]}),
        ("Switch off the coffee maker", "intent__HassTurnOff", {"name": "Coffee maker", "domain": ["input_boolean"]}),
        (
            "Set the kitchen light to 40%",
            "light__HassLightSet",
            {"name": "Kitchen light", "domain": ["light"], "brightness": 40},
        ),
        ("Is the kitchen light on?", "homeassistant__GetLiveContext", {"name": "Kitchen light", "domain": ["light"]}),
    ],
)
async def test_the_model_calls_the_tool_with_names_the_house_has(
    ha: Daemon, text: str, tool: str, arguments: dict[str, Any]
) -> None:
    answer, calls = await chat(ha, with_utterance(text))
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [(tool, arguments)], answer


LIVE = "Live Context: An overview of the areas and the devices in this smart home:\n" + yaml.safe_dump(
    [
        {"names": "Coffee maker", "domain": "input_boolean", "state": "off"},
        {"names": "Kitchen light", "domain": "light", "state": "on", "areas": "Kitchen"},
    ]
)


async def test_the_tool_loop_ends_with_a_true_sentence(ha: Daemon) -> None:
    """HA's loop: call, result, answer. The answer is built on the result and no second call follows."""
    body = with_utterance("Is the coffee maker on?")
    _, calls = await chat(ha, body)
    assert [c.function.name for c in calls] == ["homeassistant__GetLiveContext"]
    body["messages"] += [
        {"role": "assistant", "content": "", "tool_calls": [{"function": calls[0].function.model_dump()}]},
        {"role": "tool", "content": json.dumps({"data": {"result": LIVE}, "error": False})},
    ]
    answer, more = await chat(ha, body)
    assert more == [] and answer == "No, Coffee maker is off."


async def test_the_captured_failed_call_is_answered_in_words(ha: Daemon) -> None:
    answer, calls = await chat(ha, captured("assist-after-tool-result"))
    assert calls == [] and answer.startswith("Sorry, I could not turn on")
    assert "{" not in answer and "MatchFailedError" not in answer
