"""The assist turn planner on Home Assistant's captured requests (tests/fixtures/home-assistant)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from zoe_edge.api.ollama import ChatRequest
from zoe_edge.assist.house import static_house
from zoe_edge.assist.turn import plan_turn
from zoe_edge.assist.utterance import classify, mentions
from zoe_edge.canonical import GenerationRequest, ToolChoice
from zoe_edge.worker.grammar import validate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "home-assistant"


def body(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.request.json").read_text())["body"])


def canonical(data: dict[str, Any]) -> GenerationRequest:
    return ChatRequest.model_validate(data).to_canonical()


def turn(text: str, house_lines: str | None = None) -> GenerationRequest:
    """The captured first turn with another utterance (and optionally another static context)."""
    data = copy.deepcopy(body("assist-first-turn"))
    data["messages"][-1]["content"] = text
    if house_lines is not None:
        system = data["messages"][0]["content"]
        head, _, rest = system.partition("Static Context:")
        tail = rest.split("\n\n", 1)[1]
        data["messages"][0]["content"] = f"{head}Static Context: overview:\n{house_lines}\n\n{tail}"
    return canonical(data)


BIG_HOUSE = """\
- names: Kitchen light
  domain: light
  areas: Kitchen
- names: Living room lamp, Reading lamp
  domain: light
  areas: Living room
- names: Lamp
  domain: light
  areas: Bedroom
- names: Lamp
  domain: light
  areas: Office
- names: Coffee maker
  domain: switch
  areas: Kitchen
- names: Living room temperature
  domain: sensor
  areas: Living room"""


def test_static_context_is_read_from_the_captured_prompt() -> None:
    house = static_house(canonical(body("assist-first-turn")))
    assert house.names == ["Coffee maker", "Kitchen light", "Living room temperature"]
    assert house.domains == ["input_boolean", "light", "sensor"]
    assert house.areas == ["Kitchen", "Living room"]


@pytest.mark.parametrize(
    ("text", "kind", "action"),
    [
        ("Turn on the kitchen light", "command", "on"),
        ("turn the kitchen light off", "command", "off"),
        ("Please switch off the coffee maker.", "command", "off"),
        ("Could you turn on the living room lamp?", "command", "on"),
        ("Set the kitchen light to 40%", "command", "set"),
        ("dim the living room lamp to 20 percent", "command", "set"),
        ("Is the kitchen light on?", "question", None),
        ("What's the temperature in the living room?", "question", None),
        ("are any lights on", "question", None),
        ("What did I tell you about the bins?", "memory", None),
        ("Hello, who are you?", "question", None),  # a question, but not about the house: no tools
        ("Tell me if the porch light is on", "question", None),
        ("Tell a joke", "chat", None),
    ],
)
def test_utterances_are_classified(text: str, kind: str, action: str | None) -> None:
    utt = classify(text)
    assert (utt.kind, utt.action) == (kind, action), utt.reason


def test_mentions_prefer_the_longest_name_and_read_aliases() -> None:
    house = static_house(turn("x", BIG_HOUSE))
    assert [e.name for e in mentions("turn on the reading lamp", house).entities] == ["Living room lamp"]
    found = mentions("what's the temperature in the living room", house)
    assert [e.name for e in found.entities] == ["Living room temperature"]
    assert found.areas == ("Living room",)
    assert mentions("switch the lights off in the kitchen", house).areas == ("Kitchen",)


def test_chit_chat_gets_no_tools() -> None:
    plan = plan_turn(canonical(body("assist-first-turn")))
    assert plan.applied and plan.kind == "chat" and plan.answer is None
    assert plan.request.tools == [] and not plan.request.uses_tools


def _forced(plan: Any) -> tuple[str, dict[str, Any]]:
    choice = plan.request.tool_choice
    assert choice.mode == "function" and choice.arguments is not None, plan.reason
    return str(choice.name), choice.arguments


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        ("Turn on the kitchen light", "intent__HassTurnOn", {"name": "Kitchen light", "domain": ["light"]}),
        ("turn off the coffee maker", "intent__HassTurnOff", {"name": "Coffee maker", "domain": ["switch"]}),
        ("Turn off the reading lamp", "intent__HassTurnOff", {"name": "Living room lamp", "domain": ["light"]}),
        ("Switch the lights off in the kitchen", "intent__HassTurnOff", {"area": "Kitchen", "domain": ["light"]}),
        ("Turn off the kitchen light", "intent__HassTurnOff", {"name": "Kitchen light", "domain": ["light"]}),
        (
            "Turn on the lamp in the bedroom",
            "intent__HassTurnOn",
            {"name": "Lamp", "domain": ["light"], "area": "Bedroom"},
        ),
        ("Turn off everything in the living room", "intent__HassTurnOff", {"area": "Living room"}),
        (
            "Set the living room lamp to 30%",
            "light__HassLightSet",
            {"name": "Living room lamp", "domain": ["light"], "brightness": 30},
        ),
    ],
)
def test_a_command_gets_one_forced_call_naming_what_the_house_has(
    text: str, tool: str, arguments: dict[str, Any]
) -> None:
    req = turn(text, BIG_HOUSE)
    plan = plan_turn(req)
    name, schema = _forced(plan)
    assert name == tool
    # the narrowed schema admits exactly the intended arguments, and they are valid for the tool itself
    assert validate(arguments, schema) == []
    original = next(t for t in req.tools if t.name == tool).parameters
    assert validate(arguments, original) == []
    wrong = {**arguments, "name": "Kitchen"} if "name" in arguments else {**arguments, "area": "Garage"}
    assert validate(wrong, schema) != []
    # the prompt keeps every tool the client sent (one reusable prefix); only the grammar narrows
    assert [t.name for t in plan.request.tools] == [t.name for t in req.tools]


def test_a_command_that_names_nothing_is_answered_with_what_the_house_has() -> None:
    plan = plan_turn(turn("Turn on the garage door", BIG_HOUSE))
    assert plan.answer is not None and "Kitchen light" in plan.answer and "garage" not in plan.answer.lower()


def test_a_state_question_calls_live_context_first() -> None:
    name, schema = _forced(plan_turn(turn("Is the kitchen light on?")))
    assert name == "homeassistant__GetLiveContext"
    assert validate({"name": "Kitchen light", "domain": ["light"]}, schema) == []


def test_a_world_question_is_not_a_house_question() -> None:
    plan = plan_turn(turn("What is the capital of France?"))
    assert plan.kind == "chat" and plan.request.tools == []


def test_after_the_captured_failed_call_the_answer_is_a_sentence_not_json() -> None:
    plan = plan_turn(canonical(body("assist-after-tool-result")))
    assert plan.answer is not None
    assert plan.answer.startswith("Sorry, I could not turn on")
    assert "No entities matched" in plan.answer and "{" not in plan.answer


def _after(call: dict[str, Any], result: dict[str, Any], question: str = "Turn on the kitchen light") -> Any:
    data = copy.deepcopy(body("assist-after-tool-result"))
    data["messages"][-3]["content"] = question
    data["messages"][-2]["tool_calls"] = [{"function": call}]
    data["messages"][-1]["content"] = json.dumps({"data": result, "error": False})
    return plan_turn(canonical(data))


def test_an_intent_success_is_spoken_from_its_success_list() -> None:
    result = {
        "speech": {},
        "response_type": "action_done",
        "data": {"success": [{"name": "Kitchen light", "type": "entity", "id": "light.kitchen"}], "failed": []},
    }
    plan = _after({"name": "intent__HassTurnOn", "arguments": {"name": "Kitchen light"}}, result)
    assert plan.answer == "Turned on Kitchen light."
    assert plan.request.tool_choice.mode == "auto"  # no second call is offered: the turn ends here


def _live(states: list[dict[str, Any]]) -> dict[str, Any]:
    text = "Live Context: An overview of the areas and the devices in this smart home:\n" + yaml.safe_dump(states)
    return {"result": text}


LIVE = [
    {"names": "Kitchen light", "domain": "light", "state": "off", "areas": "Kitchen"},
    {"names": "Coffee maker", "domain": "input_boolean", "state": "on"},
    {
        "names": "Living room temperature",
        "domain": "sensor",
        "state": "21.5",
        "areas": "Living room",
        "attributes": {"unit_of_measurement": "°C"},
    },
]


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("Is the kitchen light on?", "No, Kitchen light is off."),
        ("Is the coffee maker on?", "Yes, Coffee maker is on."),
        ("What's the temperature in the living room?", "Living room temperature is 21.5 °C."),
    ],
)
def test_a_state_answer_says_what_the_live_context_reported(question: str, answer: str) -> None:
    plan = _after({"name": "homeassistant__GetLiveContext", "arguments": {}}, _live(LIVE), question)
    assert plan.answer == answer


def test_an_unknown_result_goes_back_to_the_model_without_tools() -> None:
    plan = _after({"name": "llm__GetDateTime", "arguments": {}}, {"date": "2026-12-01", "time": "12:00"})
    assert plan.answer is None and plan.request.tools == []


def test_requests_without_home_assistant_tools_pass_unchanged() -> None:
    req = canonical(body("chat-without-assist"))
    plan = plan_turn(req)
    assert not plan.applied and plan.request is req


def test_tool_choice_none_after_a_result_is_still_answered_from_it() -> None:
    """Extended OpenAI Conversation's last round sends tool_choice "none" with the result."""
    data = copy.deepcopy(body("assist-after-tool-result"))
    req = canonical(data).model_copy(update={"tool_choice": ToolChoice(mode="none")})
    plan = plan_turn(req)
    assert plan.answer is not None and plan.answer.startswith("Sorry, I could not turn on")
    # before a result, "none" is the client's own choice and passes through
    first = canonical(body("assist-first-turn")).model_copy(update={"tool_choice": ToolChoice(mode="none")})
    assert not plan_turn(first).applied


def test_other_clients_tools_and_explicit_choices_pass_through() -> None:
    """Without Assist's static context, or with tool_choice "required", the request is the client's."""
    data = copy.deepcopy(body("assist-first-turn"))
    data["messages"][0]["content"] = "You control a house."
    data["messages"][-1]["content"] = "Tell me a joke"
    assert not plan_turn(canonical(data)).applied
    required = turn("Tell me a joke").model_copy(update={"tool_choice": ToolChoice(mode="required")})
    assert not plan_turn(required).applied
