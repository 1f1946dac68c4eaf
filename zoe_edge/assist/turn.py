"""The turn plan for a Home Assistant Assist request served by a local model.

:func:`plan_turn` is pure: a canonical request in, a :class:`TurnPlan` out (the request the local
model gets, or the answer itself, and why). What it decides:

* **command** ("turn off the kitchen light"): exactly one call, forced. The tool follows from the
  verb, the arguments from the names the utterance shares with the house's static context, and
  the call grammar only admits those values (``ToolChoice.arguments``), so the call always names
  a thing the house has. A command that names nothing in the house is answered with what the
  house has, never guessed at.
* **state question** ("is the kitchen light on?"): the live-context call first, filtered to what
  the question names; the answer then comes from its result.
* **chit-chat** and questions about the world: no tools; the model answers.
* **after a tool result**: no further calls (a turn cannot loop), and the answer is one short
  sentence built on the result: the intent's own speech, its success and failure lists, or the
  states the live context reported. Only results of a shape this module knows are answered so;
  any other goes back to the model, without tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zoe_edge.assist.house import Entity, House, live_entities, static_house, tool_payload
from zoe_edge.assist.utterance import Mention, Utterance, classify, mentions, words
from zoe_edge.canonical import GenerationRequest, Message, Tool, ToolCallRef, ToolChoice

# Home Assistant's tool names end in these (after an API prefix such as "intent__")
TURN_ON, TURN_OFF, LIGHT_SET, LIVE_CONTEXT = "HassTurnOn", "HassTurnOff", "HassLightSet", "GetLiveContext"
_INTENTS = (TURN_ON, TURN_OFF, LIGHT_SET)
_DONE = {TURN_ON: "Turned on", TURN_OFF: "Turned off", LIGHT_SET: "Set"}
_FAILED = {TURN_ON: "turn on", TURN_OFF: "turn off", LIGHT_SET: "set"}
# what HassTurnOn / HassTurnOff do to a domain where "on" and "off" are the wrong words
_DONE_IN = {
    (TURN_ON, "cover"): "Opened",
    (TURN_OFF, "cover"): "Closed",
    (TURN_ON, "lock"): "Locked",
    (TURN_OFF, "lock"): "Unlocked",
    (TURN_ON, "valve"): "Opened",
    (TURN_OFF, "valve"): "Closed",
}
# states a yes/no question may ask about, and the states that answer "yes" to each
_ASKED_STATES: dict[str, frozenset[str]] = {
    "on": frozenset({"on"}),
    "off": frozenset({"off"}),
    "open": frozenset({"open", "opening"}),
    "closed": frozenset({"closed", "closing"}),
    "locked": frozenset({"locked"}),
    "unlocked": frozenset({"unlocked"}),
    "home": frozenset({"home"}),
}


@dataclass(frozen=True)
class TurnPlan:
    request: GenerationRequest  # what the local model is asked (the input itself when not applied)
    reason: str
    applied: bool = True
    answer: str | None = None  # set: this is the answer and the model is not asked at all
    kind: str | None = None  # command | question | chat | memory | result


def role_of(tool_name: str) -> str:
    """``intent__HassTurnOn`` -> ``HassTurnOn``."""
    return tool_name.rsplit("__", 1)[-1]


def _tools_by_role(tools: list[Tool]) -> dict[str, Tool]:
    return {role_of(t.name): t for t in tools}


def _pass(req: GenerationRequest, why: str) -> TurnPlan:
    return TurnPlan(req, why, applied=False)


def _no_tools(req: GenerationRequest) -> GenerationRequest:
    return req.model_copy(update={"tools": [], "tool_choice": ToolChoice()})


def _forced(req: GenerationRequest, tool: Tool, arguments: dict[str, Any]) -> GenerationRequest:
    return req.model_copy(update={"tool_choice": ToolChoice(mode="function", name=tool.name, arguments=arguments)})


def _object(properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties),
        "additionalProperties": False,
    }


def _one_of(values: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": values} if len(values) > 1 else {"type": "string", "const": values[0]}


def _domains(values: list[str]) -> dict[str, Any]:
    item = _one_of(values)
    return {"type": "array", "items": item, "minItems": 1, "maxItems": 1}


def target_schema(tool: Tool, mention: Mention, house: House) -> tuple[dict[str, Any] | None, str]:
    """The narrowest arguments schema for ``tool`` that still says what the utterance named.

    ``None`` when the utterance names nothing the tool can target. Only properties the tool itself
    declares are used, so every value allowed here is allowed by the tool's own schema.
    """
    declared = set((tool.parameters.get("properties") or {}).keys())
    named = list(mention.entities)
    if named and mention.areas:
        named = [e for e in named if set(e.areas) & set(mention.areas)] or named
    # "the lights in the kitchen": every light of the area, not the one whose name has both words
    area_wide = mention.plural and bool(mention.areas) and bool(mention.domains)
    if named and "name" in declared and not area_wide:
        names = sorted({e.name for e in named})
        props: dict[str, Any] = {"name": _one_of(names)}
        domains = sorted({e.domain for e in named})
        if "domain" in declared and len(domains) == 1:
            props["domain"] = _domains(domains)
        # a name several entities share ("Lamp" in two rooms) needs the area said with it
        shared = [e for e in house.entities if e.name in names]
        if len(shared) > len(named) or len(named) > 1:
            areas = sorted({a for e in named for a in e.areas if not mention.areas or a in mention.areas})
            if "area" in declared and len(areas) == 1:
                props["area"] = _one_of(areas)
        return _object(props), "target " + ", ".join(f"{e.name!r}" for e in named)
    if mention.areas and "area" in declared:
        props = {"area": _one_of(list(mention.areas))}
        if mention.domains and "domain" in declared:
            props["domain"] = _domains(list(mention.domains))
        return _object(props), f"target area {', '.join(mention.areas)}"
    if mention.domains and "domain" in declared:
        return _object({"domain": _domains(list(mention.domains))}), f"target domain {', '.join(mention.domains)}"
    return None, "no target"


def _with_brightness(schema: dict[str, Any], tool: Tool, utterance: Utterance) -> dict[str, Any]:
    declared = tool.parameters.get("properties") or {}
    if "brightness" not in declared:
        return schema
    value = {"type": "integer", "minimum": 0, "maximum": 100}
    if utterance.brightness is not None:
        value = {"type": "integer", "const": utterance.brightness}
    props = {**schema["properties"], "brightness": value}
    return _object(props)


def _command(req: GenerationRequest, tools: dict[str, Tool], utt: Utterance, house: House) -> TurnPlan:
    mention = mentions(utt.text, house)
    if utt.action == "other":
        # no verb this planner can map ("play", "arm", "set the thermostat"): the model picks the tool
        choice = ToolChoice(mode="required")
        picked = req.model_copy(update={"tool_choice": choice})
        return TurnPlan(picked, f"{utt.reason}; the model picks the call", kind="command")
    role = {"on": TURN_ON, "off": TURN_OFF, "set": LIGHT_SET}[utt.action or "on"]
    not_a_light = any(e.domain != "light" for e in mention.entities)
    if role == LIGHT_SET and (LIGHT_SET not in tools or not_a_light):
        role = TURN_OFF if utt.brightness == 0 else TURN_ON
    tool = tools.get(role)
    if tool is None:
        return TurnPlan(_no_tools(req), f"{utt.reason}; no {role} tool offered", kind="command")
    schema, target = target_schema(tool, mention, house)
    if schema is None:
        have = ", ".join(house.names[:12]) or "nothing exposed"
        answer = f"I could not tell which device you mean. This home has: {have}."
        return TurnPlan(req, f"{utt.reason}; {mention.reason}", answer=answer, kind="command")
    if role == LIGHT_SET:
        schema = _with_brightness(schema, tool, utt)
    return TurnPlan(
        _forced(req, tool, schema), f"{utt.reason}; {mention.reason}; one call {tool.name} ({target})", kind="command"
    )


def _question(req: GenerationRequest, tools: dict[str, Tool], utt: Utterance, house: House) -> TurnPlan:
    mention = mentions(utt.text, house)
    tool = tools.get(LIVE_CONTEXT)
    # a domain word alone ("what is a light year?") is not a question about the house; with a state
    # word ("are any lights on?") it is
    asks_state = any(s in words(utt.text) for s in _ASKED_STATES)
    if not (mention.entities or mention.areas or (mention.domains and asks_state)):
        return TurnPlan(_no_tools(req), f"{utt.reason}; {mention.reason}: answered without tools", kind="chat")
    if tool is None:
        return TurnPlan(_no_tools(req), f"{utt.reason}; no {LIVE_CONTEXT} tool offered", kind="question")
    schema, target = target_schema(tool, mention, house)
    return TurnPlan(
        _forced(req, tool, schema or _object({})),
        f"{utt.reason}; {mention.reason}; live context first ({target})",
        kind="question",
    )


# --- answers from tool results -----------------------------------------------------------------


def _unwrap(payload: Any) -> tuple[Any, bool]:
    """Home Assistant's ``{"data": ..., "error": bool}`` envelope, opened."""
    if isinstance(payload, dict) and set(payload) <= {"data", "error"} and "data" in payload:
        return payload["data"], bool(payload.get("error"))
    return payload, False


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _call_target(call: ToolCallRef) -> str:
    args = call.arguments
    name = args.get("name") or args.get("area")
    if name:
        return str(name)
    domain = args.get("domain")
    if isinstance(domain, list) and domain:
        return "the " + _listing([str(d) for d in domain]) + " devices"
    return "that"


def intent_answer(call: ToolCallRef, content: str, house: House | None = None) -> str | None:
    """One sentence from an intent result, or ``None`` when it is not one."""
    data, error = _unwrap(tool_payload(content))
    if not isinstance(data, dict):
        return None
    role = role_of(call.name)
    if error or "error" in data:
        text = data.get("error_text") or data.get("error") or "it failed"
        return f"Sorry, I could not {_FAILED.get(role, 'do')} {_call_target(call)}: {str(text).rstrip('.')}."
    speech = ((data.get("speech") or {}).get("plain") or {}).get("speech")
    if isinstance(speech, str) and speech.strip():
        return speech.strip()
    if data.get("response_type") == "error":
        code = (data.get("data") or {}).get("code", "error")
        return f"Sorry, I could not {_FAILED.get(role, 'do')} {_call_target(call)} ({code})."
    results = data.get("data") if isinstance(data.get("data"), dict) else None
    if results is None or "success" not in results:
        return None

    def entities(key: str) -> list[str]:
        # the lists also hold the areas and devices a target went through; the entities are what changed
        return [
            str(t["name"])
            for t in results.get(key, [])
            if isinstance(t, dict) and t.get("name") and t.get("type", "entity") == "entity"
        ]

    domain_of = {n: e.domain for e in (house.entities if house else ()) for n in e.names}
    parts = []
    by_verb: dict[str, list[str]] = {}
    for name in entities("success"):
        verb = _DONE_IN.get((role, domain_of.get(name, "")), _DONE.get(role, "Done:"))
        by_verb.setdefault(verb, []).append(name)
    how = f" to {call.arguments['brightness']}%" if role == LIGHT_SET and "brightness" in call.arguments else ""
    for verb, names in by_verb.items():
        parts.append(f"{verb} {_listing(names)}{how}.")
    failed = entities("failed")
    if failed:
        parts.append(f"I could not {_FAILED.get(role, 'change')} {_listing(failed)}.")
    return " ".join(parts) or "Nothing matched that request."


def _number(value: Any) -> float | None:
    try:
        return float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _state_phrase(entity: Entity) -> str:
    attrs = entity.attributes
    unit = attrs.get("unit_of_measurement")
    state = entity.state if entity.state is not None else "unknown"
    extra = ""
    if entity.domain == "light" and state == "on":
        # Home Assistant's live context gives brightness_pct (0-100) beside brightness (0-255)
        pct = _number(attrs.get("brightness_pct"))
        raw = _number(attrs.get("brightness"))
        if pct is None and raw is not None:
            pct = raw * 100 / 255
        if pct is not None:
            extra = f" at {round(pct)}% brightness"
    elif entity.domain == "climate":
        target, current = _number(attrs.get("temperature")), _number(attrs.get("current_temperature"))
        if target is not None:
            extra += f", set to {target:g}"
        if current is not None:
            extra += f", currently {current:g}"
    elif entity.domain == "cover" and _number(attrs.get("current_position")) is not None:
        extra = f" at {_number(attrs.get('current_position')):g}%"
    return f"{entity.name} is {state}{' ' + str(unit) if unit else ''}{extra}"


def live_answer(question: str, content: str) -> str | None:
    """The answer to ``question`` from a live-context result, or ``None`` when it reports no states."""
    data, error = _unwrap(tool_payload(content))
    if error:
        text = data.get("error") if isinstance(data, dict) else data
        return f"Sorry, I could not look that up: {str(text).rstrip('.')}."
    found = live_entities(content)
    if not found:
        return None
    about = mentions(question, House(tuple(found)))
    chosen = list(about.entities) or [e for e in found if set(e.areas) & set(about.areas)] or found
    said = set(words(question))
    asked = next((s for s in _ASKED_STATES if s in said), None)
    if asked is not None and len(chosen) == 1 and chosen[0].state is not None:
        yes = chosen[0].state.lower() in _ASKED_STATES[asked]
        return f"{'Yes' if yes else 'No'}, {_state_phrase(chosen[0])}."
    shown = chosen[:6]
    more = f" (and {len(chosen) - len(shown)} more)" if len(chosen) > len(shown) else ""
    return "; ".join(_state_phrase(e) for e in shown) + more + "."


def _after_results(req: GenerationRequest, messages: list[Message], house: House) -> TurnPlan:
    end = len(messages)
    start = end
    while start > 0 and messages[start - 1].role == "tool":
        start -= 1
    results = messages[start:end]
    caller = messages[start - 1] if start > 0 and messages[start - 1].role == "assistant" else None
    calls = list(caller.tool_calls or []) if caller is not None else []
    question = next((m.content for m in reversed(messages[:start]) if m.role == "user"), "")
    by_id = {c.id: c for c in calls if c.id}
    sentences: list[str] = []
    for i, result in enumerate(results):
        call = by_id.get(result.tool_call_id or "") or (calls[i] if i < len(calls) else None)
        if call is None:
            sentences = []
            break
        role = role_of(call.name)
        sentence = (
            intent_answer(call, result.content, house)
            if role in _INTENTS
            else live_answer(question, result.content)
            if role == LIVE_CONTEXT
            else None
        )
        if sentence is None:
            sentences = []
            break
        sentences.append(sentence)
    if sentences:
        return TurnPlan(req, "answer from the tool result", answer=" ".join(sentences), kind="result")
    return TurnPlan(_no_tools(req), "after a tool result: the model answers, without tools", kind="result")


def plan_turn(req: GenerationRequest, answers: str = "result") -> TurnPlan:
    """What the local model does with this turn (see the module docstring).

    ``answers="model"``: after a tool result the model writes the answer (without tools) instead
    of a sentence built on the result.
    """
    tools = _tools_by_role(req.tools)
    if not (set(tools) & {TURN_ON, TURN_OFF, LIVE_CONTEXT}):
        return _pass(req, "not a Home Assistant Assist turn")
    if req.tool_choice.mode in ("function", "required"):
        return _pass(req, f"the client chose tool_choice {req.tool_choice.mode!r}")
    house = static_house(req)
    if not house:
        # Assist always lists the exposed entities; without them this is some other client's tools
        return _pass(req, "the request lists no exposed entities")
    messages = req.messages or []
    if not messages:
        return _pass(req, "no messages")
    # after a result, even with tool_choice "none" (Extended OpenAI Conversation's last round): an
    # answer built on the result makes no call, which is what "none" asks for
    if messages[-1].role == "tool":
        if answers == "model":
            return TurnPlan(_no_tools(req), "after a tool result: the model answers, without tools", kind="result")
        return _after_results(req, messages, house)
    if req.tool_choice.mode == "none":
        return _pass(req, "the client chose tool_choice 'none'")
    if messages[-1].role != "user":
        return _pass(req, "the last message is not the user's")
    utt = classify(messages[-1].content)
    if utt.kind == "command":
        return _command(req, tools, utt, house)
    if utt.kind == "question":
        return _question(req, tools, utt, house)
    return TurnPlan(_no_tools(req), f"{utt.reason}: answered without tools", kind=utt.kind)
