"""Which priority a request gets (zoe_edge.routing.priority), the config that sets it, and that the gateway
hands it to the supervisor: pure functions first, then the registry, then the gateway over a fake supervisor."""

from __future__ import annotations

import json
import typing
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from zoe_edge.access.keys import ClientKey, KeyTable
from zoe_edge.api.common import parse_body
from zoe_edge.api.ollama.requests import ChatRequest
from zoe_edge.cache.service import ResponseCache
from zoe_edge.canonical import Event, Finish, GenerationRequest, Message, Priority, TextDelta, Usage
from zoe_edge.errors import RegistryError
from zoe_edge.registry import Registry, parse_registry
from zoe_edge.routing.dispatch import Dispatcher
from zoe_edge.routing.priority import (
    HA_AI_TASK_PROMPT,
    PriorityChoice,
    Traffic,
    choose_priority,
    is_ha_ai_task,
    parse_priority,
    traffic_priority,
)
from zoe_edge.routing.routes import plan_request
from zoe_edge.service import Gateway, RequestContext
from zoe_edge.worker.protocol import Embedded

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "home-assistant"
NORMAL_TRAFFIC = PriorityChoice(Priority.NORMAL, "openai-chat: default")


def ha_body(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())["body"]
    return body


def ai_task_body() -> dict[str, Any]:
    """What HA's AI Task entity sends through the same Ollama integration: ChatLog.async_provide_llm_data with
    user_llm_prompt=DEFAULT_SYSTEM_PROMPT puts that prompt where the conversation agent's instructions go, then
    the same API prompt ("\\n"-joined), and the task's instructions as the user message."""
    body = ha_body("assist-first-turn.request.json")
    system = body["messages"][0]["content"]
    # the fixture's first three lines are llm.DEFAULT_INSTRUCTIONS_PROMPT; the API prompt follows
    api_prompt = system.split("\n", 3)[3]
    body["messages"] = [
        {"role": "system", "content": f"{HA_AI_TASK_PROMPT}\n{api_prompt}"},
        {"role": "user", "content": "Summarise what the living room temperature did today in one sentence."},
    ]
    return body


def canonical(body: dict[str, Any]) -> GenerationRequest:
    return parse_body(ChatRequest, body).to_canonical()


# --- the pure decisions ---------------------------------------------------------------------------


def test_each_source_in_its_order_of_precedence() -> None:
    route = ("ha-tasks", Priority.BACKGROUND)
    key = ("automations", Priority.NORMAL)
    traffic = PriorityChoice(Priority.INTERACTIVE, "Ollama chat: voice default")
    assert choose_priority(Priority.INTERACTIVE, route, key, traffic) == PriorityChoice(
        Priority.INTERACTIVE, "X-Zoe-Priority header"
    )
    assert choose_priority(None, route, key, traffic) == PriorityChoice(Priority.BACKGROUND, "route 'ha-tasks'")
    assert choose_priority(None, None, key, traffic) == PriorityChoice(Priority.NORMAL, "key 'automations'")
    assert choose_priority(None, None, None, traffic) is traffic
    # the route beats the key even when the key asks for more: one HA key, two subentries told apart by route
    assert choose_priority(None, route, ("ha", Priority.INTERACTIVE), traffic).priority is Priority.BACKGROUND
    # and the header beats both, lower or higher
    assert choose_priority(Priority.BACKGROUND, None, ("ha", Priority.INTERACTIVE), traffic).priority is (
        Priority.BACKGROUND
    )


@pytest.mark.parametrize(
    "name",
    ["assist-first-turn.request.json", "assist-after-tool-result.request.json", "chat-without-assist.request.json"],
)
def test_home_assistant_conversation_turns_are_interactive(name: str) -> None:
    req = canonical(ha_body(name))
    assert not is_ha_ai_task(req)
    assert traffic_priority(req, "ollama-chat") == PriorityChoice(Priority.INTERACTIVE, "Ollama chat: voice default")


def test_home_assistant_ai_task_is_background() -> None:
    req = canonical(ai_task_body())
    assert is_ha_ai_task(req)
    assert traffic_priority(req, "ollama-chat") == PriorityChoice(Priority.BACKGROUND, "Home Assistant AI Task prompt")
    # the same text through another front is that front's default: only HA's Ollama path is read
    assert traffic_priority(req, "openai-chat").priority is Priority.NORMAL


def test_the_ai_task_prompt_must_open_the_system_message() -> None:
    def req(*messages: Message) -> GenerationRequest:
        return GenerationRequest(model="m", messages=list(messages))

    user = Message(role="user", content=HA_AI_TASK_PROMPT)
    assert is_ha_ai_task(req(Message(role="system", content="\n " + HA_AI_TASK_PROMPT + "\nMore."), user))
    assert not is_ha_ai_task(req(Message(role="system", content="Note: " + HA_AI_TASK_PROMPT)))
    assert not is_ha_ai_task(req(user))  # a user quoting it is not HA's AI Task
    assert not is_ha_ai_task(GenerationRequest(model="m", prompt=HA_AI_TASK_PROMPT))  # a raw prompt has no system
    # HA's prompt is a sentence, not a prefix of one: a longer first sentence is someone else's
    assert not is_ha_ai_task(req(Message(role="system", content=HA_AI_TASK_PROMPT[:-1] + " and more.")))


# every front the Literal names except Ollama chat, the one with a traffic default of its own
@pytest.mark.parametrize("traffic", [t for t in typing.get_args(Traffic) if t != "ollama-chat"])
def test_every_other_front_defaults_to_normal(traffic: Any) -> None:
    choice = traffic_priority(canonical(ha_body("assist-first-turn.request.json")), traffic)
    assert choice.priority is Priority.NORMAL and traffic in choice.reason


def test_parse_priority() -> None:
    assert parse_priority(None) is None
    assert parse_priority("background") is Priority.BACKGROUND
    assert parse_priority(" interactive ") is Priority.INTERACTIVE  # HTTP's optional whitespace
    with pytest.raises(ValueError, match="got 'Interactive'"):
        parse_priority("Interactive")  # as the OpenAPI description says: lower case only
    with pytest.raises(ValueError, match="must be one of interactive, normal, background, got 'urgent'"):
        parse_priority("urgent")
    with pytest.raises(ValueError, match="one of"):
        parse_priority("")


# --- the config that sets it ----------------------------------------------------------------------

BASE: dict[str, Any] = {
    "default": "small",
    "models": {"small": {"file": "/x.gguf", "chat_format": "chatml", "reasoning": "none"}},
    "routes": {
        "ha-tasks": {"targets": ["small"], "priority": "background"},
        "ha-voice": {"targets": ["small"], "priority": "interactive"},
        "plain": {"targets": ["small"]},
    },
    "auto": {"default": "plain", "rules": [{"route": "ha-tasks", "reason": "a task", "pattern": "summar"}]},
    "keys": {"automations": {"key": "sha256:" + "ab" * 32, "priority": "background"}},
}


def registry(**changes: Any) -> Registry:
    return parse_registry({**BASE, **changes})


def test_route_and_key_priorities_parse_and_reach_the_plan_and_the_key() -> None:
    reg = registry()
    req = GenerationRequest(model="x", messages=[Message(role="user", content="summarise the day")])
    assert plan_request(reg, "ha-tasks", req).route_priority == ("ha-tasks", Priority.BACKGROUND)
    assert plan_request(reg, "plain", req).route_priority is None
    assert plan_request(reg, "small", req).route_priority is None  # a model or alias carries none
    # the auto router's plan has the priority of the route it chose
    assert plan_request(reg, "auto", req).route_priority == ("ha-tasks", Priority.BACKGROUND)
    other = GenerationRequest(model="x", messages=[Message(role="user", content="hello")])
    assert plan_request(reg, "auto", other).route_priority is None
    table = KeyTable.build(reg.keys, Path("."))
    assert table.keys[0].id == "automations" and table.keys[0].priority is Priority.BACKGROUND


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        (
            {"routes": {"ha-tasks": {"targets": ["small"], "priority": "urgent"}}},
            "field 'routes.ha-tasks.priority': Input should be 'interactive', 'normal' or 'background'",
        ),
        (
            {"keys": {"automations": {"key": "sha256:" + "ab" * 32, "priority": 2}}},
            "field 'keys.automations.priority': Input should be 'interactive', 'normal' or 'background'",
        ),
    ],
)
def test_a_bad_priority_is_a_registry_error_naming_the_field(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(RegistryError) as err:
        registry(**changes, auto=None)
    assert needle in str(err.value)


# --- the gateway hands it to the supervisor -------------------------------------------------------


class FakeSupervisor:
    """What the gateway and dispatcher call on the supervisor for a local answer, recording the priority."""

    def __init__(self, reg: Registry) -> None:
        self.registry = reg
        self.model: str | None = None
        self.swap_records: list[Any] = []
        self.generated: list[tuple[str, Priority]] = []
        self.embedded: list[tuple[str, Priority]] = []

    def generate(
        self, model: str, req: GenerationRequest, deadline: float | None = None, priority: Priority = Priority.NORMAL
    ) -> AsyncGenerator[Event, None]:
        self.generated.append((model, priority))

        async def answer() -> AsyncGenerator[Event, None]:
            yield TextDelta("ok")
            yield Finish("stop", Usage(3, 1))

        return answer()

    async def embed(
        self,
        model: str,
        texts: list[str],
        deadline: float | None = None,
        *,
        truncate: bool = False,
        priority: Priority = Priority.NORMAL,
    ) -> Embedded:
        self.embedded.append((model, priority))
        return Embedded(vectors=[[1.0, 0.0]] * len(texts), prompt_tokens=2, n_embd=2, embed_ms=1.0)


def gateway(reg: Registry) -> tuple[Gateway, FakeSupervisor]:
    sup = FakeSupervisor(reg)
    dispatcher = Dispatcher(reg, sup, {})  # type: ignore[arg-type]
    cache = ResponseCache(reg.cache, reg, None)
    return Gateway(reg, sup, dispatcher, cache), sup  # type: ignore[arg-type]


async def generate(gw: Gateway, ctx: RequestContext, name: str, body: dict[str, Any]) -> dict[str, str]:
    dispatched = await gw.generate(ctx, name, canonical(body))
    await dispatched.events.aclose()
    return dispatched.headers()


@pytest.mark.parametrize(
    ("name", "header", "key", "body", "expected", "reason"),
    [
        ("small", None, None, "conversation", Priority.INTERACTIVE, "Ollama chat: voice default"),
        ("small", None, None, "ai-task", Priority.BACKGROUND, "Home Assistant AI Task prompt"),
        ("ha-tasks", None, None, "conversation", Priority.BACKGROUND, "route 'ha-tasks'"),
        ("small", None, "automations", "conversation", Priority.BACKGROUND, "key 'automations'"),
        # Home Assistant's one key for both subentries: the route it names decides
        ("ha-voice", None, "automations", "ai-task", Priority.INTERACTIVE, "route 'ha-voice'"),
        ("ha-tasks", Priority.NORMAL, "automations", "conversation", Priority.NORMAL, "X-Zoe-Priority header"),
    ],
)
async def test_the_chosen_priority_reaches_the_supervisor_and_the_headers(
    name: str, header: Priority | None, key: str | None, body: str, expected: Priority, reason: str
) -> None:
    reg = registry()
    gw, sup = gateway(reg)
    ctx = RequestContext("r1", requested_priority=header, traffic="ollama-chat")
    if key is not None:
        ctx.use_key(ClientKey(key, priority=reg.keys[key].priority))
    sent = ai_task_body() if body == "ai-task" else ha_body("assist-first-turn.request.json")
    headers = await generate(gw, ctx, name, sent)
    assert sup.generated == [("small", expected)]
    assert ctx.priority == PriorityChoice(expected, reason)
    assert headers["x-zoe-priority"] == expected.value and headers["x-zoe-priority-reason"] == reason
    assert ctx.route_headers["x-zoe-priority"] == expected.value


async def test_embeddings_carry_the_priority_to_the_supervisor() -> None:
    reg = registry()
    gw, sup = gateway(reg)
    ctx = RequestContext("r1", traffic="openai-embeddings")
    await gw.embed(ctx, "ha-tasks", ["a", "b"], None)
    ctx2 = RequestContext("r2", traffic="ollama-embed", requested_priority=Priority.INTERACTIVE)
    await gw.embed(ctx2, "small", ["a"], None)
    ctx3 = RequestContext("r3", traffic="ollama-embed")
    await gw.embed(ctx3, "small", ["a"], None)
    assert sup.embedded == [("small", Priority.BACKGROUND), ("small", Priority.INTERACTIVE), ("small", Priority.NORMAL)]
    assert ctx.route_headers["x-zoe-priority"] == "background"
    assert ctx3.priority.reason == "ollama-embed: default"
