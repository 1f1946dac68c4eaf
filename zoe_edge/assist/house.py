"""The house as one request describes it: exposed entities, areas, domains, and reported states.

Home Assistant writes both its static context (system prompt) and a ``GetLiveContext`` result as a
title line followed by a YAML list, one item per exposed entity::

    Static Context: An overview of the areas and the devices in this smart home:
    - names: Kitchen light, Ceiling
      domain: light
      areas: Kitchen

``names`` and ``areas`` join several values with ", " (aliases); a live item adds ``state`` and
``attributes``. Everything here is read from the request; nothing is assumed about a house.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from zoe_edge.canonical import GenerationRequest

_STATIC = re.compile(r"^Static Context:[^\n]*\n", re.MULTILINE)
_LIVE = re.compile(r"^Live Context:[^\n]*\n", re.MULTILINE)


@dataclass(frozen=True)
class Entity:
    names: tuple[str, ...]
    domain: str
    areas: tuple[str, ...] = ()
    state: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class House:
    entities: tuple[Entity, ...]

    @property
    def areas(self) -> list[str]:
        return sorted({a for e in self.entities for a in e.areas})

    @property
    def domains(self) -> list[str]:
        return sorted({e.domain for e in self.entities})

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entities]

    def __bool__(self) -> bool:
        return bool(self.entities)


def _split(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value if str(v).strip())
    if value is None:
        return ()
    return tuple(part.strip() for part in str(value).split(", ") if part.strip())


def _yaml_block(text: str, start: int) -> list[Any]:
    """The YAML list that begins at ``start``: its lines start with ``- `` or an indent."""
    lines: list[str] = []
    for line in text[start:].splitlines():
        if line.startswith(("- ", "  ")) or (line.startswith("-") and len(line) == 1):
            lines.append(line)
        elif lines or line.strip():
            break
    try:
        parsed = yaml.safe_load("\n".join(lines)) if lines else None
    except yaml.YAMLError:
        return []
    return parsed if isinstance(parsed, list) else []


def entities_in(text: str, title: re.Pattern[str]) -> list[Entity]:
    """Every entity listed under each ``title`` line of ``text``."""
    out: list[Entity] = []
    for match in title.finditer(text):
        for item in _yaml_block(text, match.end()):
            if not isinstance(item, dict):
                continue
            names = _split(item.get("names"))
            domain = str(item.get("domain") or "").strip()
            if not names or not domain:
                continue
            state = item.get("state")
            attributes = item.get("attributes")
            out.append(
                Entity(
                    names=names,
                    domain=domain,
                    areas=_split(item.get("areas")),
                    state=None if state is None else str(state),
                    attributes=dict(attributes) if isinstance(attributes, dict) else {},
                )
            )
    return out


def static_house(req: GenerationRequest) -> House:
    """The exposed entities Home Assistant lists in the system prompt (empty when it lists none)."""
    found: list[Entity] = []
    for message in req.messages or []:
        if message.role == "system":
            found += entities_in(message.content, _STATIC)
    return House(tuple(found))


def tool_payload(content: str) -> Any:
    """A tool result as data: JSON when it is JSON, else the text itself."""
    try:
        return json.loads(content)
    except ValueError:
        return content


def live_entities(content: str) -> list[Entity]:
    """The states a ``GetLiveContext`` result reports (its text may sit inside a JSON wrapper)."""
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(tool_payload(content))
    return [e for text in texts for e in entities_in(text, _LIVE)]
