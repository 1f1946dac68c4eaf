"""Home Assistant's Assist request, as Home Assistant 2026.11 really sends it, over a bench house.

The prompt layout and the tool list are the captured ones (``cases/ha_assist_2026_11.json``, copied
from ``tests/fixtures/home-assistant/assist-first-turn.request.json`` so the bench runs on a board
without the tests folder): HA's instructions, then ``Static Context:`` with a YAML item per exposed
entity (``names``, ``domain``, ``areas``; no states, which HA only returns from ``GetLiveContext``),
then the intent instructions; the six tools with their API prefixes (``intent__HassTurnOn``,
``homeassistant__GetLiveContext`` with its typeless ``domain``, ...).

The bench house (:func:`bench_house`) has named entities with aliases, two entities sharing a name
in different areas, sensors, covers, a lock and climate, then filler entities so the default prompt
is about 2,000 SmolLM2 tokens, the size the latency suite has always measured. Its states
(:func:`initial_states`) are kept apart, as HA keeps them. Deterministic: the same arguments always
give the same text.

The older synthetic layout (states in the static context, unprefixed invented tools) stays as
:func:`legacy_system_prompt` / :data:`TOOLS` for the ``tools`` suite, a call-format suite whose
case set names its devices; the ``assist`` suite and the latency prompt use the real layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from zoe_edge.bench.hass import Area, Device, House, State, static_context
from zoe_edge.canonical import Tool

AREAS = (
    "Kitchen", "Living Room", "Bedroom", "Office", "Hall", "Garage", "Porch", "Bathroom",
    "Dining Room", "Guest Room", "Laundry", "Garden",
)  # fmt: skip

# (domain, device names, the states it can be in, the device class when HA sets one)
_KINDS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str | None], ...] = (
    ("light", ("Ceiling Light", "Lamp", "Spotlights", "Strip Light", "Pendant"), ("on", "off"), None),
    ("switch", ("Coffee Maker", "Fan Plug", "Heater Plug", "Printer Plug"), ("on", "off"), "outlet"),
    ("cover", ("Blinds", "Shutter", "Door"), ("open", "closed"), "blind"),
    ("climate", ("Thermostat",), ("heat", "off", "cool"), None),
    ("lock", ("Lock",), ("locked", "unlocked"), None),
    ("media_player", ("Speaker", "TV"), ("playing", "paused", "idle"), None),
    ("sensor", ("Temperature", "Humidity"), ("21.5", "48"), "temperature"),
    ("fan", ("Ceiling Fan",), ("on", "off"), None),
)

INSTRUCTIONS = (
    "You are a voice assistant for Home Assistant.\n"
    "Answer questions about the world truthfully.\n"
    "Answer in plain text. Keep it simple and to the point.\n"
    "When controlling Home Assistant always call the intent tools. Use HassTurnOn to lock and HassTurnOff "
    "to unlock a lock. When controlling a device, prefer passing just name and domain. When controlling an "
    "area, prefer passing just area name and domain.\n"
    "When a user asks to turn on all devices of a specific type, ask user to specify an area, unless there "
    "is only one device of that type.\n"
    "This device is not able to start timers.\n"
    "You ARE equipped to answer questions about the current state of the home using the GetLiveContext tool. "
    "This is a primary function. Do not state you lack the functionality if the question requires live data.\n"
)


@dataclass(frozen=True)
class Entity:
    name: str
    domain: str
    state: str
    area: str
    device_class: str | None = None

    @property
    def entity_id(self) -> str:
        return f"{self.domain}.{self.name.lower().replace(' ', '_')}"


def entities(count: int) -> list[Entity]:
    """``count`` distinct entities spread over the areas, the same list every time."""
    out: list[Entity] = []
    i = 0
    while len(out) < count:
        area = AREAS[i % len(AREAS)]
        domain, names, states, device_class = _KINDS[(i // len(AREAS)) % len(_KINDS)]
        name = names[(i // (len(AREAS) * len(_KINDS))) % len(names)]
        round_ = i // (len(AREAS) * len(_KINDS) * len(names))
        full = f"{area} {name}" + (f" {round_ + 1}" if round_ else "")
        out.append(Entity(full, domain, states[i % len(states)], area, device_class))
        i += 1
    return out


def legacy_system_prompt(n_entities: int = 70) -> str:
    """The older synthetic prompt (states in the static context) the ``tools`` suite's cases were written for."""
    lines = [INSTRUCTIONS, "Static Context: An overview of the areas and the devices in this smart home:"]
    for e in entities(n_entities):
        lines.append(f"- names: {e.name}\n  domain: {e.domain}\n  state: '{e.state}'\n  areas: {e.area}")
        if e.device_class:
            lines.append(f"  attributes:\n    device_class: {e.device_class}")
    return "\n".join(lines)


def _target_params(extra: dict[str, Any] | None = None, required: list[str] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": {"type": "string"},
        "area": {"type": "string"},
        "domain": {"type": "array", "items": {"type": "string"}},
    }
    props.update(extra or {})
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


def _tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


# OpenAI-style tool definitions shaped like Home Assistant's intent tools
TOOLS: list[dict[str, Any]] = [
    _tool("HassTurnOn", "Turns on/opens/locks a device or entity", _target_params()),
    _tool("HassTurnOff", "Turns off/closes/unlocks a device or entity", _target_params()),
    _tool(
        "HassLightSet",
        "Sets the brightness percentage or color of a light",
        _target_params({"brightness": {"type": "integer", "minimum": 0, "maximum": 100}, "color": {"type": "string"}}),
    ),
    _tool(
        "HassClimateSetTemperature",
        "Sets the target temperature of a climate device or entity",
        _target_params({"temperature": {"type": "number"}}, required=["temperature"]),
    ),
    _tool(
        "HassSetPosition",
        "Sets the position of a device or entity",
        _target_params({"position": {"type": "integer", "minimum": 0, "maximum": 100}}, required=["position"]),
    ),
    _tool("HassMediaPause", "Pauses a media player", _target_params()),
    _tool("HassMediaUnpause", "Resumes a media player", _target_params()),
    _tool(
        "HassSetVolume",
        "Sets the volume percentage of a media player",
        _target_params({"volume_level": {"type": "integer", "minimum": 0, "maximum": 100}}, required=["volume_level"]),
    ),
    _tool(
        "HassListAddItem",
        "Add item to a todo list",
        {
            "type": "object",
            "properties": {"item": {"type": "string"}, "name": {"type": "string"}},
            "required": ["item", "name"],
        },
    ),
    _tool("GetLiveContext", "Provides real-time information about the CURRENT state of devices", {"type": "object"}),
]


def user_turns() -> list[str]:
    """Short voice commands and questions, as Assist would send them after the system prompt."""
    return [
        "Turn on the kitchen ceiling light.",
        "Is the garage door open?",
        "Set the hall thermostat to 21 degrees.",
        "Dim the living room lamp to 30 percent.",
        "What's the temperature in the bedroom?",
        "Turn off all the lights in the office.",
        "Pause the living room speaker.",
        "Lock the porch lock.",
    ]


# --- the real layout ---------------------------------------------------------------------------------


@cache
def capture() -> dict[str, Any]:
    """The captured Home Assistant 2026.11 request parts (package data)."""
    text = resources.files("zoe_edge.bench.cases").joinpath("ha_assist_2026_11.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def assist_tool_defs() -> list[dict[str, Any]]:
    """The six tools exactly as Home Assistant's Ollama integration sends them (wire format)."""
    return [dict(t) for t in capture()["tools"]]


def assist_tools() -> list[Tool]:
    return [Tool.model_validate(t["function"]) for t in assist_tool_defs()]


HOUSE_AREAS = (
    Area("kitchen", "Kitchen"),
    Area("living_room", "Living Room", ("Lounge",)),
    Area("bedroom", "Bedroom"),
    Area("office", "Office", ("Study",)),
    Area("hall", "Hall"),
    Area("garage", "Garage"),
    Area("porch", "Porch"),
    Area("bathroom", "Bathroom"),
    Area("dining_room", "Dining Room"),
    Area("guest_room", "Guest Room"),
    Area("laundry", "Laundry"),
    Area("garden", "Garden"),
)

# the devices the assist cases talk about: (entity id, names, area, device class, state, attributes)
_CORE: tuple[tuple[str, tuple[str, ...], str | None, str | None, str, dict[str, Any]], ...] = (
    ("light.kitchen_light", ("Kitchen Light", "Big Light"), "kitchen", None, "off", {}),
    ("light.kitchen_spotlights", ("Kitchen Spotlights",), "kitchen", None, "on", {"brightness": 255}),
    ("light.living_room_lamp", ("Lamp",), "living_room", None, "on", {"brightness": 128}),
    ("light.bedroom_lamp", ("Lamp",), "bedroom", None, "off", {}),
    ("light.desk_lamp", ("Desk Lamp",), "office", None, "off", {}),
    ("light.hall_light", ("Hall Light",), "hall", None, "on", {"brightness": 204}),
    ("light.porch_light", ("Porch Light",), "porch", None, "on", {"brightness": 255}),
    ("switch.coffee_maker", ("Coffee Maker",), "kitchen", "outlet", "off", {}),
    ("input_boolean.guest_mode", ("Guest Mode",), None, None, "off", {}),
    ("fan.bedroom_ceiling_fan", ("Ceiling Fan",), "bedroom", None, "off", {"percentage": 0}),
    ("cover.garage_door", ("Garage Door",), "garage", "garage", "closed", {"current_position": 0}),
    ("cover.living_room_blinds", ("Living Room Blinds",), "living_room", "blind", "open", {"current_position": 100}),
    ("lock.front_door", ("Front Door Lock", "Front Door"), "hall", None, "unlocked", {}),
    ("media_player.living_room_tv", ("TV",), "living_room", "tv", "idle", {}),
    ("climate.thermostat", ("Thermostat",), "hall", None, "heat", {"temperature": 20, "current_temperature": 19.5}),
    ("sensor.living_room_temperature", ("Living Room Temperature",), "living_room", "temperature", "21.5",
     {"unit_of_measurement": "°C"}),
    ("sensor.bedroom_humidity", ("Bedroom Humidity",), "bedroom", "humidity", "48", {"unit_of_measurement": "%"}),
    ("sensor.outdoor_temperature", ("Outdoor Temperature",), "garden", "temperature", "12.3",
     {"unit_of_measurement": "°C"}),
    ("binary_sensor.kitchen_window", ("Kitchen Window",), "kitchen", "window", "off", {}),
)  # fmt: skip

# filler: (domain, device name, states cycled, device class) for each area, after the core devices
_FILLER: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("light", "Ceiling Light", ("off", "on"), None),
    ("switch", "Heater Plug", ("off", "on"), "outlet"),
    ("sensor", "Motion Count", ("3", "0", "12"), None),
    ("light", "Strip Light", ("on", "off"), None),
    ("binary_sensor", "Door Sensor", ("off", "on"), "door"),
    ("media_player", "Speaker", ("idle", "playing", "paused"), "speaker"),
    ("sensor", "Illuminance", ("120", "15", "340"), "illuminance"),
    ("switch", "Printer Plug", ("off", "on"), "outlet"),
    ("light", "Pendant", ("off", "on"), None),
)
DEFAULT_ENTITIES = 92  # about 2,000 SmolLM2 tokens of system prompt, as the latency suite always measured


def _slug(text: str) -> str:
    return "_".join(text.lower().replace("-", " ").split())


def _house_rows(n_entities: int) -> list[tuple[str, tuple[str, ...], str | None, str | None, str, dict[str, Any]]]:
    rows = list(_CORE[:n_entities])
    i = 0
    while len(rows) < n_entities:
        area = HOUSE_AREAS[i % len(HOUSE_AREAS)]
        domain, name, states, device_class = _FILLER[(i // len(HOUSE_AREAS)) % len(_FILLER)]
        round_ = i // (len(HOUSE_AREAS) * len(_FILLER))
        full = f"{area.name} {name}" + (f" {round_ + 1}" if round_ else "")
        attrs: dict[str, Any] = {}
        state = states[i % len(states)]
        if domain == "light" and state == "on":
            attrs = {"brightness": 255}
        if domain == "sensor" and device_class == "illuminance":
            attrs = {"unit_of_measurement": "lx"}
        rows.append((f"{domain}.{_slug(full)}", (full,), area.id, device_class, state, attrs))
        i += 1
    return rows


def bench_house(n_entities: int = DEFAULT_ENTITIES) -> House:
    """The bench house: the core devices, then filler up to ``n_entities`` exposed entities."""
    devices = tuple(Device(eid, names, area, dc) for eid, names, area, dc, _, _ in _house_rows(n_entities))
    return House(HOUSE_AREAS, devices)


def initial_states(n_entities: int = DEFAULT_ENTITIES) -> dict[str, State]:
    """The house's states before a case runs (device classes travel as attributes, as in HA)."""
    out = {}
    for eid, _, _, dc, state, attrs in _house_rows(n_entities):
        out[eid] = State(state, {**attrs, **({"device_class": dc} if dc else {})})
    return out


def system_prompt(n_entities: int = DEFAULT_ENTITIES, house: House | None = None) -> str:
    """Home Assistant 2026.11's Assist system prompt over the bench house (``n_entities`` exposed).

    The default is about 2,000 SmolLM2 tokens.
    """
    parts = capture()
    block = static_context(house or bench_house(n_entities))
    return str(parts["prompt_before_static_context"]) + block + str(parts["prompt_after_static_context"])


def chat_body(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``POST /api/chat`` body as Home Assistant's Ollama integration sends it."""
    parts = capture()
    return {
        "model": model,
        "stream": True,
        "options": dict(parts["options"]),
        "keep_alive": parts["keep_alive"],
        "messages": messages,
        "tools": assist_tool_defs(),
        "think": parts["think"],
    }
