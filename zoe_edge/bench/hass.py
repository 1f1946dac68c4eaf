"""What Home Assistant 2026.11 does with a tool call, over a bench house: pure functions.

The assist suite grades a model by the effect its calls would have in a real Home Assistant, not
by argument strings. This module redoes, in a few pages, the parts of Home Assistant a call goes
through (read from ``homeassistant/helpers/intent.py``, ``helpers/llm.py``,
``components/intent/__init__.py``, ``components/light/intent.py`` and
``components/homeassistant/llm.py`` of 2026.11.0):

* target matching as ``intent.async_match_targets`` does it: domain filter, then the name
  (case-insensitive, stripped, against the entity's name and aliases, or its entity id), device
  class, area (name, id or alias); several entities left under one name is a duplicate-name
  failure unless the tool allows duplicates (``GetLiveContext`` does); no match raises
  ``MatchFailedError`` with HA's own sentence ("No entities matched the name (given name 'x')");
* the intents HassTurnOn / HassTurnOff (on/off, open/close for covers, lock/unlock for locks, a
  failure for domains without the service) and HassLightSet (``light`` only; brightness 0-100);
* ``GetLiveContext``: the live-context YAML (names, domain, state, areas, the attributes HA
  keeps) for the entities its filters match;
* the tool result envelope the Ollama integration sends back: ``{"data": ..., "error": bool}``,
  an intent's ``IntentResponse.as_dict()`` without language and card, a raised error as
  ``{"error": <exception class>, "error_text": <message>}``.

Nothing here runs a model; every function takes the house and the states and returns new data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

TURN_ON, TURN_OFF, LIGHT_SET, LIVE_CONTEXT = "HassTurnOn", "HassTurnOff", "HassLightSet", "GetLiveContext"
STATIC_TITLE = "Static Context: An overview of the areas and the devices in this smart home:"
LIVE_TITLE = "Live Context: An overview of the areas and the devices in this smart home:"
# the attributes HA's async_get_exposed_entities keeps in the live context
INTERESTING_ATTRIBUTES = frozenset(
    {
        "temperature", "current_temperature", "temperature_unit", "brightness", "humidity",
        "unit_of_measurement", "device_class", "current_position", "percentage", "volume_level",
        "media_title", "media_artist", "media_album_name",
    }
)  # fmt: skip
# domains that have turn_on / turn_off services (homeassistant.turn_on falls back to them)
ON_OFF_DOMAINS = frozenset({"light", "switch", "fan", "input_boolean", "media_player", "climate", "automation"})
# the device classes HassTurnOn/HassTurnOff accept (ONOFF_DEVICE_CLASSES, as the tool schema lists them)
ONOFF_DEVICE_CLASSES = (
    "identify", "restart", "update", "awning", "blind", "curtain", "damper", "door", "garage", "gate",
    "shade", "shutter", "window", "tv", "speaker", "receiver", "projector", "outlet", "switch", "water", "gas",
)  # fmt: skip
NO_ENTITIES_PROMPT = (
    "Only if the user wants to control a device, tell them to expose entities "
    "to their voice assistant in Home Assistant."
)


@dataclass(frozen=True)
class Area:
    id: str
    name: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Device:
    """One exposed entity: what the static context says of it (its state lives apart, as in HA)."""

    entity_id: str
    names: tuple[str, ...]  # the name first, then aliases
    area: str | None = None  # an Area id
    device_class: str | None = None

    @property
    def domain(self) -> str:
        return self.entity_id.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class State:
    state: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


States = Mapping[str, State]  # entity id -> its state


@dataclass(frozen=True)
class House:
    areas: tuple[Area, ...]
    devices: tuple[Device, ...]

    def area(self, area_id: str | None) -> Area | None:
        return next((a for a in self.areas if a.id == area_id), None)

    def device(self, entity_id: str) -> Device | None:
        return next((d for d in self.devices if d.entity_id == entity_id), None)


# --- the YAML Home Assistant writes --------------------------------------------------------------


def _dump(items: list[dict[str, Any]]) -> str:
    # annotatedyaml's dump: block style, unicode kept, keys in insertion order
    return str(yaml.safe_dump(items, default_flow_style=False, allow_unicode=True, sort_keys=False))


def _area_names(house: House, device: Device) -> str | None:
    area = house.area(device.area)
    if area is None:
        return None
    return ", ".join([area.name, *sorted(area.aliases)])


def _sorted(house: House) -> list[Device]:
    # HA walks hass.states sorted by the state's (friendly) name
    return sorted(house.devices, key=lambda d: d.name)


def _attributes(device: Device, state: State) -> dict[str, Any]:
    attrs = {**state.attributes}
    if device.device_class and "device_class" not in attrs:
        attrs["device_class"] = device.device_class
    out: dict[str, Any] = {
        str(k): (str(v) if isinstance(v, int) and not isinstance(v, bool) else v)
        for k, v in attrs.items()
        if k in INTERESTING_ATTRIBUTES
    }
    brightness = attrs.get("brightness")
    if out and device.domain == "light" and isinstance(brightness, int) and not isinstance(brightness, bool):
        pct = round(brightness / 255 * 100)
        out["brightness_pct"] = str(max(pct, 1) if brightness > 0 else pct)
    return out


def _info(house: House, device: Device, state: State | None) -> dict[str, Any]:
    info: dict[str, Any] = {"names": ", ".join(device.names), "domain": device.domain}
    if state is not None:
        info["state"] = state.state
    areas = _area_names(house, device)
    if areas:
        info["areas"] = areas
    if state is not None and (attrs := _attributes(device, state)):
        info["attributes"] = attrs
    return info


def static_context(house: House) -> str:
    """The static context block of the system prompt: title line, then the YAML (no states)."""
    return STATIC_TITLE + "\n" + _dump([_info(house, d, None) for d in _sorted(house)])


def live_context_text(house: House, states: States, devices: Iterable[Device] | None = None) -> str:
    chosen = {d.entity_id for d in (house.devices if devices is None else devices)}
    items = [_info(house, d, states.get(d.entity_id)) for d in _sorted(house) if d.entity_id in chosen]
    return "\n".join([LIVE_TITLE, _dump(items)])


# --- target matching (intent.async_match_targets) ---------------------------------------------------


def _norm(text: str) -> str:
    return text.strip().casefold()


@dataclass(frozen=True)
class Match:
    """What matching found: the devices, or why none (HA's MatchFailedReason name)."""

    devices: tuple[Device, ...] = ()
    reason: str | None = None  # None: matched
    areas: tuple[Area, ...] = ()
    no_match_name: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class Constraints:
    name: str | None = None
    area: str | None = None
    floor: str | None = None
    domains: tuple[str, ...] | None = None
    device_classes: tuple[str, ...] | None = None
    allow_duplicate_names: bool = False

    def describe(self) -> str:
        """HA's _describe_constraints: the constraints set, in a fixed order."""
        out = [
            f"{label} {value!r}"
            for label, value in (("name", self.name), ("area", self.area), ("floor", self.floor))
            if value
        ]
        for label, values in (("domains", self.domains), ("device classes", self.device_classes)):
            if values:
                out.append(f"{label} {', '.join(sorted(values))}")
        return ", ".join(out)


_FAILURES = {
    "NAME": "No entities matched the name",
    "AREA": "No entities were in the area",
    "FLOOR": "No entities were on the floor",
    "DOMAIN": "No entities matched the domain",
    "DEVICE_CLASS": "No entities matched the device class",
    "INVALID_AREA": "The area does not exist",
    "INVALID_FLOOR": "The floor does not exist",
    "DUPLICATE_NAME": "Multiple entities share the name",
}


def failure_message(match: Match, constraints: Constraints) -> str:
    """HA's _match_failure_message: the reason's sentence and the constraints in play."""
    message = _FAILURES.get(match.reason or "", "No entities matched")
    described = constraints.describe()
    return f"{message} (given {described})" if described else message


def find_areas(house: House, name: str) -> list[Area]:
    want = _norm(name)
    return [a for a in house.areas if a.id == name or _norm(a.name) == want or any(_norm(x) == want for x in a.aliases)]


def match_targets(house: House, c: Constraints, candidates: Sequence[Device] | None = None) -> Match:
    """The devices ``c`` selects, in the order and with the failures of ``intent.async_match_targets``."""
    found = list(house.devices if candidates is None else candidates)
    if c.domains:
        found = [d for d in found if d.domain in c.domains]
        if not found:
            return Match(reason="DOMAIN")
    if c.name:
        want = _norm(c.name)
        found = [d for d in found if d.entity_id == c.name or any(_norm(n) == want for n in d.names)]
        if not found:
            return Match(reason="NAME")
    if c.device_classes:
        found = [d for d in found if d.device_class in c.device_classes]
        if not found:
            return Match(reason="DEVICE_CLASS")
    areas: list[Area] = []
    if c.floor:
        # the bench house has no floors
        return Match(reason="INVALID_FLOOR", no_match_name=c.floor)
    if c.area:
        areas = find_areas(house, c.area)
        if not areas:
            return Match(reason="INVALID_AREA", no_match_name=c.area)
        ids = {a.id for a in areas}
        found = [d for d in found if d.area in ids]
        if not found:
            return Match(reason="AREA", areas=tuple(areas))
    if c.name and not c.allow_duplicate_names and len(found) > 1:
        # every candidate matched the same name: without a preferred area, HA cannot choose
        return Match(reason="DUPLICATE_NAME", areas=tuple(areas), no_match_name=c.name)
    return Match(tuple(found), areas=tuple(areas))


# --- executing a call --------------------------------------------------------------------------------


class ToolError(Exception):
    """An exception Home Assistant's chat log turns into ``{"error": <class>, "error_text": ...}``."""

    def __init__(self, kind: str, text: str = "") -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text


@dataclass(frozen=True)
class Outcome:
    """One executed call: the tool result as HA sends it back, and the house's states after it."""

    content: str  # the role "tool" message content (JSON, as HA's json_dumps writes it)
    payload: dict[str, Any]
    states: dict[str, State]
    changed: tuple[str, ...] = ()  # entity ids whose state or attributes the call changed

    @property
    def error(self) -> bool:
        return bool(self.payload.get("error"))


def role_of(tool_name: str) -> str:
    return tool_name.rsplit("__", 1)[-1]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _strings(value: Any, slot: str, intent_type: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        raise ToolError("InvalidSlotInfo", f"Received invalid slot info for {intent_type}")
    return tuple(str(v) for v in values)


def _service(device: Device, on: bool, brightness: int | None, state: State) -> State:
    """The state a device is in after turn_on/turn_off (or open/close, lock/unlock)."""
    domain = device.domain
    attrs = dict(state.attributes)
    if domain == "cover":
        return State("open" if on else "closed", attrs)
    if domain == "lock":
        return State("locked" if on else "unlocked", attrs)
    if domain == "valve":
        return State("open" if on else "closed", attrs)
    if domain not in ON_OFF_DOMAINS:
        raise ToolError(
            "IntentHandleError", f"Service turn_{'on' if on else 'off'} does not support entity {device.entity_id}"
        )
    if domain == "light":
        if brightness is not None:
            on = brightness > 0
            if on:
                attrs["brightness"] = round(brightness * 255 / 100)
        if not on:
            attrs.pop("brightness", None)
        elif "brightness" not in attrs:
            attrs["brightness"] = 255
    if domain == "climate":
        return State("heat" if on else "off", attrs)
    return State("on" if on else "off", attrs)


def _intent(
    house: House, states: dict[str, State], role: str, args: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    slots = {k: v for k, v in args.items() if not _blank(v)}
    text: dict[str, str] = {}
    for key in ("name", "area", "floor"):
        if key in slots:
            value = slots[key]
            if not isinstance(value, str | int | float) or isinstance(value, bool) or not str(value).strip():
                raise ToolError("InvalidSlotInfo", f"Received invalid slot info for {role}")
            text[key] = str(value)
    domains = _strings(slots["domain"], "domain", role) if "domain" in slots else None
    if role == LIGHT_SET:
        if domains is not None and any(d != "light" for d in domains):
            raise ToolError("InvalidSlotInfo", f"Received invalid slot info for {role}")
        domains = domains or ("light",)
    device_classes = None
    if "device_class" in slots and role != LIGHT_SET:
        device_classes = _strings(slots["device_class"], "device_class", role)
        if any(dc not in ONOFF_DEVICE_CLASSES for dc in device_classes):
            raise ToolError("InvalidSlotInfo", f"Received invalid slot info for {role}")
    brightness: int | None = None
    if role == LIGHT_SET and "brightness" in slots:
        try:
            brightness = int(slots["brightness"])
        except (TypeError, ValueError):
            raise ToolError("InvalidSlotInfo", f"Received invalid slot info for {role}") from None
        if not 0 <= brightness <= 100:
            raise ToolError("InvalidSlotInfo", f"Received invalid slot info for {role}")
    name = text.get("name")
    if name == "all":
        name = None
    c = Constraints(name, text.get("area"), text.get("floor"), domains, device_classes)
    if not (c.name or c.area or c.floor or c.domains or c.device_classes):
        raise ToolError("IntentHandleError", "Service handler cannot target all devices")
    match = match_targets(house, c)
    if not match.ok:
        raise ToolError("MatchFailedError", failure_message(match, c))
    success: list[dict[str, Any]] = [{"name": a.name, "type": "area", "id": a.id} for a in match.areas]
    failed: list[dict[str, Any]] = []
    changed: list[str] = []
    on = role != TURN_OFF
    for device in match.devices:
        target = {"name": device.name, "type": "entity", "id": device.entity_id}
        before = states.get(device.entity_id, State("unknown"))
        try:
            after = _service(device, on, brightness if role == LIGHT_SET else None, before)
        except ToolError:
            failed.append(target)
            continue
        if after != before:
            states[device.entity_id] = after
            changed.append(device.entity_id)
        success.append(target)
    if not [s for s in success if s["type"] == "entity"] and failed:
        service = "turn_on" if on else "turn_off"
        raise ToolError("IntentHandleError", f"Failed to call {service} for: {[t['id'] for t in failed]}")
    data = {"speech": {}, "response_type": "action_done", "data": {"success": success, "failed": failed}}
    return data, changed


def _live(house: House, states: States, args: Mapping[str, Any]) -> dict[str, Any]:
    if not house.devices:
        raise _Result({"error": NO_ENTITIES_PROMPT})
    name = args.get("name")
    area = args.get("area")
    raw_domain = args.get("domain")
    for value in (name, area):
        if value is not None and not isinstance(value, str):
            raise ToolError("MultipleInvalid", "expected str")
    domains: list[str] | None = None
    if raw_domain is not None:
        items = [raw_domain] if isinstance(raw_domain, str) else raw_domain
        if not isinstance(items, list) or not all(isinstance(d, str) for d in items):
            raise ToolError("MultipleInvalid", "expected str for dictionary value @ data['domain']")
        domains = [n for d in items if (n := d.strip().lower())]
    devices: Sequence[Device] = house.devices
    if name or area or domains:
        c = Constraints(
            name or None, area or None, None, tuple(domains) if domains else None, allow_duplicate_names=True
        )
        match = match_targets(house, c)
        if not match.ok:
            if match.reason == "INVALID_AREA":
                text = f"Area '{match.no_match_name}' does not exist"
            elif match.reason == "NAME":
                text = f"No exposed entities matched name '{name}'"
            elif match.reason == "AREA":
                text = f"No exposed entities found in area '{area}'"
            elif match.reason == "DOMAIN":
                text = f"No exposed entities found in domain(s): {', '.join(domains or [])}"
            else:
                text = "No entities matched the provided filter"
            raise _Result({"error": text})
        devices = match.devices
    return {"result": live_context_text(house, states, devices)}


class _Result(Exception):
    """A tool that returns ``ToolResult(data, error=True)`` itself (GetLiveContext's failures)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(str(data))
        self.data = data


def envelope(data: Any, error: bool) -> str:
    """The role "tool" content the Ollama integration sends: compact JSON, as HA's json_dumps."""
    return json.dumps({"data": data, "error": error}, ensure_ascii=False, separators=(",", ":"))


def call_tool(
    house: House, states: States, tool_name: str, arguments: Mapping[str, Any], offered: Iterable[str]
) -> Outcome:
    """Execute one call as Home Assistant would; ``offered``: the tool names the request offered."""
    after = dict(states)
    changed: list[str] = []
    try:
        if tool_name not in set(offered):
            raise ToolError("HomeAssistantError", f'Tool "{tool_name}" not found')
        role = role_of(tool_name)
        if role in (TURN_ON, TURN_OFF, LIGHT_SET):
            data, changed = _intent(house, after, role, arguments)
        elif role == LIVE_CONTEXT:
            data = _live(house, after, arguments)
        elif role == "GetDateTime":
            data = {
                "success": True,
                "result": {"date": "2026-11-20", "time": "18:30:00", "timezone": "UTC", "weekday": "Friday"},
            }
        elif role == "HassCancelAllTimers":
            raise ToolError("IntentHandleError", "No timers")
        else:
            raise ToolError("UnknownIntent", f"Unknown intent {role}")
        payload = {"data": data, "error": False}
    except _Result as exc:
        payload = {"data": exc.data, "error": True}
    except ToolError as exc:
        data = {"error": exc.kind}
        if exc.text:
            data["error_text"] = exc.text
        payload = {"data": data, "error": True}
        after, changed = dict(states), []
    return Outcome(envelope(payload["data"], bool(payload["error"])), payload, after, tuple(changed))
