"""A Home-Assistant-shaped workload: the Assist system prompt with its entity overview, and its tools.

Home Assistant's conversation agents send the same long system prompt on every turn: a few lines
of instructions, then a YAML overview of every exposed entity (name, domain, state, area), then
the tools of its intents (HassTurnOn, HassLightSet, ...). The benchmarks and the bench suites use
this module so that "a 2k-token HA prompt" means the same text everywhere. Deterministic: the same
arguments always give the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def system_prompt(n_entities: int = 70) -> str:
    """The Assist system prompt with ``n_entities`` exposed entities; the default is about 2,000 SmolLM2 tokens."""
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
