"""Route planning, ``auto`` classification and fallback reasons: pure functions, no daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zoe_edge.canonical import GenerationRequest, Message, Tool
from zoe_edge.errors import Failure, ModelNotFound, RegistryError
from zoe_edge.registry import load_registry, parse_registry
from zoe_edge.routing.routes import Target, classify, fallback_reason, parse_target, plan_request

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry() -> Any:
    """The shipped registry: its auto rules are what the owner gets."""
    return load_registry(REPO / "models.yaml")


def chat(text: str, tools: bool = False) -> GenerationRequest:
    offered = [Tool(name="HassTurnOn", parameters={"type": "object", "properties": {}})] if tools else []
    return GenerationRequest(model="auto", messages=[Message(role="user", content=text)], tools=offered)


ACTION = [
    "Turn on the kitchen lights",
    "turn off the bedroom fan",
    "Switch off the TV",
    "Set the thermostat to 21 degrees",
    "Dim the living room lights to 30%",
    "Open the garage door",
    "close the blinds in the office",
    "Lock the front door",
    "Unlock the back door",
    "Please turn on the porch light",
    "Start the vacuum",
    "Stop the music",
    "Play some jazz in the kitchen",
    "Pause the movie",
    "Arm the alarm",
    "Increase the temperature by two degrees",
    "Lower the volume",
]
MEMORY = [
    "Remember that the plumber comes on Tuesday",
    "What did I say about the plumber?",
    "When did I last water the plants?",
    "Where did I put my keys?",
    "Remind me what I ate yesterday",
    "Did I already feed the cat?",
    "Can you remember my wifi password?",
]
CHAT = [
    "What is the capital of France?",
    "Tell me a joke",
    "How are you today?",
    "Explain photosynthesis in one sentence",
    "What's the weather like on Mars?",
    "Who wrote Pride and Prejudice?",
    "Is a tomato a fruit?",
    "Write a haiku about autumn",
    "The lights are on in the kitchen, aren't they?",  # mentions a device but asks, does not command
]


@pytest.mark.parametrize("text", ACTION)
def test_commands_route_to_action(registry: Any, text: str) -> None:
    route, reason = classify(registry.auto, chat(text))
    assert route == "zoe-action", (text, reason)


@pytest.mark.parametrize("text", MEMORY)
def test_memory_questions_route_to_memory(registry: Any, text: str) -> None:
    route, reason = classify(registry.auto, chat(text))
    assert route == "zoe-memory", (text, reason)


@pytest.mark.parametrize("text", CHAT)
def test_everything_else_is_chat(registry: Any, text: str) -> None:
    route, reason = classify(registry.auto, chat(text))
    assert (route, reason) == ("zoe-chat", "no rule matched"), text


def test_tools_alone_do_not_make_a_request_an_action(registry: Any) -> None:
    # Home Assistant sends its tools with every turn: what was said decides, not the tools
    assert classify(registry.auto, chat("Tell me a joke", tools=True)) == ("zoe-chat", "no rule matched")
    route, reason = classify(registry.auto, chat("Is the kitchen light on?", tools=True))
    assert (route, reason) == ("zoe-action", "state question")


def test_auto_plan_carries_the_reason(registry: Any) -> None:
    plan = plan_request(registry, "auto", chat("Turn on the lights"))
    assert plan.route == "zoe-action"
    assert plan.reason == "zoe-action (device command)"
    assert plan.targets[0].local


def test_plans_for_models_aliases_and_routes(registry: Any) -> None:
    model = registry.default_model
    assert plan_request(registry, model, chat("hi")).targets == (Target(model),)
    alias = next(iter(registry.aliases))
    assert plan_request(registry, alias, chat("hi")).reason == f"{alias} (alias of {registry.aliases[alias]})"
    with pytest.raises(ModelNotFound) as err:
        plan_request(registry, "gpt-17", chat("hi"))
    assert "auto" in err.value.message and "zoe-action" in err.value.message


def test_parse_target() -> None:
    assert parse_target("smollm2-135m") == Target("smollm2-135m")
    assert parse_target("openai:gpt-4o-mini") == Target("gpt-4o-mini", "openai")
    assert parse_target("openrouter:meta-llama/llama-3.1-8b") == Target("meta-llama/llama-3.1-8b", "openrouter")
    assert Target("m").label == "local:m" and Target("x", "anthropic").label == "anthropic:x"


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("busy", 503, "local model busy"),
        ("queue_full", 503, "local queue full"),
        ("model_too_large", 503, "model does not fit"),
        ("model_load_failed", 503, "model failed to load"),
        ("worker_crashed", 503, "worker crashed before the first token"),
        (None, 502, "error 502"),
        (None, 429, "provider rate-limited"),
        ("invalid_value", 400, None),  # the request is wrong: another target would not fix it
        ("context_length_exceeded", 400, None),
    ],
)
def test_fallback_reasons(code: str | None, status: int, expected: str | None) -> None:
    assert fallback_reason(Failure.of(code, status), status) == expected


BASE: dict[str, Any] = {"default": "m", "models": {"m": {"file": "/x.gguf"}}}


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"routes": {"r": {"targets": ["nope"]}}}, "target 'nope' is not a model"),
        ({"routes": {"r": {"targets": ["ghost:gpt"]}}}, "unknown provider 'ghost'"),
        ({"routes": {"r": {"targets": []}}}, "targets"),
        ({"routes": {"m": {"targets": ["m"]}}}, "same name as a model"),
        ({"auto": {"default": "nowhere"}}, "'nowhere' is not a model, alias or route"),
        (
            {"auto": {"default": "m", "rules": [{"route": "m", "reason": "x", "pattern": "(unclosed"}]}},
            "not a valid regular expression",
        ),
        ({"auto": {"name": "m", "default": "m"}}, "already a model"),
    ],
)
def test_bad_routes_are_clear_registry_errors(extra: dict[str, Any], words: str) -> None:
    with pytest.raises(RegistryError) as err:
        parse_registry({**BASE, **extra})
    assert any(words in p for p in err.value.problems), err.value.problems


def _conversation(*roles: str, tools: bool = True, choice: str = "auto") -> GenerationRequest:
    from zoe_edge.canonical import ToolCallRef, ToolChoice

    messages = []
    for role in roles:
        if role == "assistant":
            messages.append(Message(role="assistant", tool_calls=[ToolCallRef(name="HassTurnOn")]))
        else:
            messages.append(Message(role=role, content="Turn on the lights"))  # type: ignore[arg-type]
    offered = [Tool(name="HassTurnOn")] if tools else []
    return GenerationRequest(model="auto", messages=messages, tools=offered, tool_choice=ToolChoice(mode=choice))


def test_first_turn_policy_forces_one_call_then_text() -> None:
    from zoe_edge.routing.routes import effective_tool_choice

    assert effective_tool_choice("first-turn", _conversation("system", "user")).mode == "required"
    assert effective_tool_choice("first-turn", _conversation("user", "assistant", "tool")).mode == "none"
    assert effective_tool_choice(None, _conversation("user")).mode == "auto"
    assert effective_tool_choice("required", _conversation("user")).mode == "required"
    # a client's explicit choice and a request without tools are left alone
    assert effective_tool_choice("first-turn", _conversation("user", choice="none")).mode == "none"
    assert effective_tool_choice("first-turn", _conversation("user", tools=False)).mode == "auto"


def test_device_command_rule_carries_its_tool_policy(registry: Any) -> None:
    plan = plan_request(registry, "auto", chat("Turn on the lights", tools=True))
    assert plan.reason == "zoe-action (device command)" and plan.tool_choice == "first-turn"
    plan = plan_request(registry, "auto", chat("Is the kitchen light on?", tools=True))
    assert plan.reason == "zoe-action (state question)" and plan.tool_choice is None


def test_thermal_skip() -> None:
    from zoe_edge.routing.routes import thermal_skip

    assert thermal_skip("normal", "tj 60 C", has_fallback=True) is None
    assert thermal_skip("soft", "tj 96 C", has_fallback=False) is None  # nowhere else to go: stay local
    assert thermal_skip("soft", "tj 96 C", has_fallback=True) == "board over its soft thermal limit (tj 96 C)"
    assert thermal_skip("hard", "tj 101 C", has_fallback=False) == "board over its hard thermal limit (tj 101 C)"
    assert fallback_reason(Failure.TOO_HOT, 503) == "board over its thermal limit"
