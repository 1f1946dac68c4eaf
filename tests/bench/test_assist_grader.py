"""The assist suite's grader: what Home Assistant 2026.11 would do with a call, over the bench house."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from zoe_edge.assist import plan_turn
from zoe_edge.assist.house import live_entities, static_house
from zoe_edge.bench import ha
from zoe_edge.bench.cases import assist_cases
from zoe_edge.bench.hass import Constraints, call_tool, match_targets
from zoe_edge.bench.suite import GREEDY
from zoe_edge.bench.turns import GenerationRequest, Reply, canonical, grade_turn, run_turn

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "home-assistant"
HOUSE = ha.bench_house()
STATES = ha.initial_states()
OFFERED = [t["function"]["name"] for t in ha.assist_tool_defs()]


def call(tool: str, /, **args: Any) -> tuple[dict[str, Any], Any]:
    out = call_tool(HOUSE, STATES, tool, args, OFFERED)
    assert json.loads(out.content) == out.payload  # the content is the envelope, as HA sends it
    return out.payload, out


def test_the_package_data_is_the_captured_request() -> None:
    captured = json.loads((FIXTURES / "assist-first-turn.request.json").read_text())["body"]
    assert ha.assist_tool_defs() == captured["tools"]
    parts = ha.capture()
    prompt = captured["messages"][0]["content"]
    assert (
        prompt
        == parts["prompt_before_static_context"]
        + "Static Context: An overview of the areas and the devices in this smart home:\n"
        + parts["captured_static_context"]
        + parts["prompt_after_static_context"]
    )
    assert "homeassistant__GetLiveContext" in OFFERED and "intent__HassTurnOn" in OFFERED


def test_system_prompt_has_the_real_layout_and_the_planner_reads_its_house() -> None:
    prompt = ha.system_prompt()
    assert prompt.startswith("You are a voice assistant for Home Assistant.")
    assert "- names: Kitchen Light, Big Light\n  domain: light\n  areas: Kitchen\n" in prompt
    assert "state:" not in prompt  # HA 2026.11 keeps states out of the static context
    assert prompt.endswith("This device is not able to start timers.")
    req = canonical(
        ha.chat_body("m", [{"role": "system", "content": prompt}, {"role": "user", "content": "hi"}]), GREEDY, 8
    )
    house = static_house(req)
    assert len(house.entities) == len(HOUSE.devices) == ha.DEFAULT_ENTITIES
    lamps = [e for e in house.entities if e.name == "Lamp"]
    assert {e.areas for e in lamps} == {("Living Room", "Lounge"), ("Bedroom",)}


def test_match_by_name_alias_entity_id_case_insensitive() -> None:
    for name in ("Kitchen Light", "  kitchen LIGHT ", "big light", "light.kitchen_light"):
        m = match_targets(HOUSE, Constraints(name=name))
        assert m.ok and [d.entity_id for d in m.devices] == ["light.kitchen_light"], name
    # an area by name, id or alias; a domain filter
    for area in ("Office", "office", "study"):
        m = match_targets(HOUSE, Constraints(area=area, domains=("light",)))
        assert (
            m.ok
            and {d.entity_id for d in m.devices} >= {"light.desk_lamp"}
            and all(d.area == "office" for d in m.devices)
        )


def test_shared_name_is_ambiguous_unless_an_area_tells() -> None:
    m = match_targets(HOUSE, Constraints(name="Lamp"))
    assert m.reason == "DUPLICATE_NAME"
    payload, _ = call("intent__HassTurnOn", name="Lamp", domain=["light"])
    assert payload == {
        "data": {
            "error": "MatchFailedError",
            "error_text": "Multiple entities share the name (given name 'Lamp', domains light)",
        },
        "error": True,
    }
    payload, out = call("intent__HassTurnOn", name="Lamp", area="Bedroom")
    assert payload["error"] is False and out.changed == ("light.bedroom_lamp",)
    assert payload["data"]["data"]["success"] == [
        {"name": "Bedroom", "type": "area", "id": "bedroom"},
        {"name": "Lamp", "type": "entity", "id": "light.bedroom_lamp"},
    ]
    # GetLiveContext allows duplicates: both lamps come back
    payload, _ = call("homeassistant__GetLiveContext", name="lamp")
    assert {e.areas for e in live_entities(json.dumps(payload))} == {("Living Room", "Lounge"), ("Bedroom",)}


def test_match_failures_in_home_assistants_words() -> None:
    # the captured result: a call that names only a domain the house lacks
    captured = json.loads((FIXTURES / "assist-after-tool-result.request.json").read_text())["body"]["messages"][-1]
    payload, out = call("intent__HassTurnOn", domain=["home_assistant"])
    assert out.content == captured["content"] and out.error
    cases = {
        "No entities matched the name (given name 'Sauna')": {"name": "Sauna"},
        "The area does not exist (given area 'Attic', domains light)": {"area": "Attic", "domain": ["light"]},
        "No entities were in the area (given area 'Garage', domains fan)": {"area": "Garage", "domain": "fan"},
    }
    for text, args in cases.items():
        payload, out = call("intent__HassTurnOff", **args)
        assert payload == {"data": {"error": "MatchFailedError", "error_text": text}, "error": True}
        assert out.states == STATES and out.changed == ()
    payload, _ = call("intent__HassTurnOn")
    assert payload["data"] == {"error": "IntentHandleError", "error_text": "Service handler cannot target all devices"}
    payload, _ = call("HassTurnOn", name="Kitchen Light")  # not offered under that name
    assert payload["data"] == {"error": "HomeAssistantError", "error_text": 'Tool "HassTurnOn" not found'}
    payload, _ = call("intent__HassTurnOn", name="Living Room Temperature")
    assert payload["data"]["error"] == "IntentHandleError"  # a sensor has no turn_on


def test_state_changes_and_the_intent_result_envelope() -> None:
    payload, out = call("intent__HassTurnOn", name="Kitchen Light", domain=["light"])
    assert payload == {
        "data": {
            "speech": {},
            "response_type": "action_done",
            "data": {
                "success": [{"name": "Kitchen Light", "type": "entity", "id": "light.kitchen_light"}],
                "failed": [],
            },
        },
        "error": False,
    }
    assert out.states["light.kitchen_light"].state == "on" and out.changed == ("light.kitchen_light",)
    assert STATES["light.kitchen_light"].state == "off"  # pure: the input is untouched
    _, out = call("intent__HassTurnOn", name="front door")
    assert out.states["lock.front_door"].state == "locked"
    _, out = call("intent__HassTurnOn", name="Garage Door")
    assert out.states["cover.garage_door"].state == "open"
    _, out = call("light__HassLightSet", name="Desk Lamp", brightness=40)
    assert out.states["light.desk_lamp"].state == "on" and out.states["light.desk_lamp"].attributes["brightness"] == 102
    _, out = call("light__HassLightSet", name="Porch Light", brightness=0)
    assert out.states["light.porch_light"].state == "off"
    payload, _ = call("light__HassLightSet", name="Coffee Maker", brightness=10)
    assert payload["data"]["error"] == "MatchFailedError"  # HassLightSet targets lights only
    _, out = call("intent__HassTurnOff", area="Kitchen", domain=["light"])
    kitchen = {d.entity_id for d in HOUSE.devices if d.area == "kitchen" and d.domain == "light"}
    assert set(out.changed) == {e for e in kitchen if STATES[e].state == "on"}
    assert all(out.states[e].state == "off" for e in kitchen)


def test_live_context_parses_back_with_the_planners_reader() -> None:
    payload, _ = call("homeassistant__GetLiveContext", area="Living Room")
    assert payload["error"] is False
    text = payload["data"]["result"]
    assert text.startswith("Live Context: An overview of the areas and the devices in this smart home:\n- names: ")
    found = {e.name: e for e in live_entities(json.dumps(payload))}
    assert set(found) == {d.name for d in HOUSE.devices if d.area == "living_room"}
    assert found["Living Room Temperature"].state == "21.5"
    assert found["Living Room Temperature"].attributes["unit_of_measurement"] == "°C"
    assert found["Lamp"].state == "on" and found["Lamp"].attributes["brightness_pct"] == "50"
    assert found["Lamp"].areas == ("Living Room", "Lounge")
    everything = live_entities(call("homeassistant__GetLiveContext")[1].content)
    assert len(everything) == len(HOUSE.devices)
    payload, _ = call("homeassistant__GetLiveContext", name="Sauna")
    assert payload == {"data": {"error": "No exposed entities matched name 'Sauna'"}, "error": True}
    payload, _ = call("homeassistant__GetLiveContext", domain="Lock ")
    assert [e.name for e in live_entities(json.dumps(payload))] == ["Front Door Lock"]


def test_the_case_set_is_consistent_with_the_house() -> None:
    cases = assist_cases()
    assert len(cases) >= 30 and len({c.id for c in cases}) == len(cases)
    assert {c.kind for c in cases} == {"command", "question", "chat"}
    assert 5 <= len(assist_cases(quick=True)) <= 12
    for case in cases:
        for entity_id, state, pct in case.expect:
            # every expected change is a change: another state, or another brightness
            before = STATES[entity_id]
            assert before.state != state or before.attributes.get("brightness") != round((pct or 0) * 255 / 100), (
                case.id
            )


def _scripted(replies: list[Reply]) -> Any:
    seen: list[GenerationRequest] = []

    async def generate(req: GenerationRequest) -> Reply:
        seen.append(req)
        return replies[len(seen) - 1] if len(seen) <= len(replies) else replies[-1]

    return generate, seen


def test_the_loop_executes_calls_feeds_results_back_and_grades_by_effect() -> None:
    case = next(c for c in assist_cases() if c.id == "on-bedroom-lamp-shared-name")
    generate, seen = _scripted(
        [Reply(calls=[("intent__HassTurnOn", {"name": "Lamp", "area": "Bedroom"})]), Reply(text="Turned on the lamp.")]
    )
    turn = asyncio.run(run_turn(case.user, HOUSE, STATES, generate, "m", GREEDY, 32))
    assert turn.iterations == 2 and turn.answer == "Turned on the lamp." and not turn.loop and turn.error is None
    assert grade_turn(case, HOUSE, STATES, turn).ok
    # the second request carries the call and HA's result, as the daemon's Ollama front parses them
    second = seen[1]
    assert [m.role for m in second.messages or []] == ["system", "user", "assistant", "tool"]
    assert json.loads((second.messages or [])[-1].content)["error"] is False
    # what the daemon's planner makes of that second request: an answer from the result
    answer = plan_turn(second).answer
    assert answer is not None and answer.startswith("Turned on") and "Lamp" in answer

    # a model that keeps calling the same thing loops until HA's limit, and the shared name fails
    generate, _ = _scripted([Reply(calls=[("intent__HassTurnOn", {"name": "Lamp"})])])
    turn = asyncio.run(run_turn(case.user, HOUSE, STATES, generate, "m", GREEDY, 32))
    assert turn.iterations == 10 and turn.loop and turn.answer is None
    assert turn.error is not None and "MatchFailedError" in turn.error
    assert not grade_turn(case, HOUSE, STATES, turn).ok


def test_question_grades_by_the_truth_of_the_answer() -> None:
    case = next(c for c in assist_cases() if c.id == "q-garage-door-open")
    for text, ok in (
        ("No, Garage Door is closed.", True),
        ("Yes, the garage door is open.", False),
        ("Let me check.", False),
    ):
        generate, _ = _scripted([Reply(text=text)])
        turn = asyncio.run(run_turn(case.user, HOUSE, STATES, generate, "m", GREEDY, 32))
        assert grade_turn(case, HOUSE, STATES, turn).ok is ok, text
    # a question that changes the house fails, whatever it says
    generate, _ = _scripted(
        [Reply(calls=[("intent__HassTurnOn", {"name": "Garage Door"})]), Reply(text="No, it is closed.")]
    )
    turn = asyncio.run(run_turn(case.user, HOUSE, STATES, generate, "m", GREEDY, 32))
    assert not grade_turn(case, HOUSE, STATES, turn).ok


@pytest.mark.parametrize("text", ["Turned on the sauna.", "Done!"])
def test_a_command_for_a_missing_device_must_not_claim_success(text: str) -> None:
    case = next(c for c in assist_cases() if c.id == "on-missing-sauna")
    generate, _ = _scripted([Reply(text=text)])
    turn = asyncio.run(run_turn(case.user, HOUSE, STATES, generate, "m", GREEDY, 32))
    assert not grade_turn(case, HOUSE, STATES, turn).ok
