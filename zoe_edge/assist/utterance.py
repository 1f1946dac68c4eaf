"""What the last user utterance asks for, and which of the house's names it mentions.

A small, explicit classifier (English, as Home Assistant's captured traffic is): the first words
of a command are a verb ("turn", "switch", "set", "dim", ...), possibly behind a polite opener; a
state question opens with a question word or ends with "?"; a memory question names what the
person said before. Everything else is chit-chat. Each result carries the words that decided it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from zoe_edge.assist.house import Entity, House

Kind = Literal["command", "question", "memory", "chat"]
Action = Literal["on", "off", "set", "other"]

_OPENER = r"^\W*(?:(?:hey|ok|okay|hi)\b[^,]*,\s*)?(?:please\s+|(?:can|could|would|will)\s+you\s+(?:please\s+)?)?"
# "turn on X", and "turn X on" with up to four words between
_ON = r"(?:turn|switch)(?:\s+\w+){0,4}\s+on|activate|enable|start|open|lock"
_OFF = r"(?:turn|switch|shut)(?:\s+\w+){0,4}\s+off|shut\s+down|deactivate|disable|stop|close|unlock"
_SET = r"set|dim|brighten|increase|decrease|raise|lower|make"
# commands with no on/off meaning: the model chooses among the tools for these
_OTHER = r"toggle|play|pause|resume|arm|disarm|mute|unmute|skip"
_COMMAND = re.compile(_OPENER + rf"(?P<verb>{_ON}|{_OFF}|{_SET}|{_OTHER})\b", re.IGNORECASE)
_BRIGHTNESS_VERB = re.compile(r"dim|brighten", re.IGNORECASE)
_MEMORY = re.compile(r"\b(remember|remind me|what did i|when did i|where did i|did i)\b", re.IGNORECASE)
_QUESTION = re.compile(
    r"^\W*(?:(?:hey|ok|okay|hi)\b[^,]*,\s*)?(?:is|are|was|were|what|what's|whats|how|which|who|where|when|does|do"
    r"|did|has|have|any|(?:can you )?tell me (?:if|whether|what|how|which))\b",
    re.IGNORECASE,
)
_PERCENT = re.compile(r"\b(\d{1,3})\s*(?:%|percent\b)")
_NUMBER = re.compile(r"\bto\s+(\d{1,3})\b")
_WORD = re.compile(r"[a-z0-9]+")
# words that say nothing about which thing is meant
_FILLER = frozenset({"the", "a", "an", "my", "in", "on", "off", "of", "to", "at", "all", "and", "please"})


@dataclass(frozen=True)
class Utterance:
    text: str
    kind: Kind
    reason: str
    action: Action | None = None  # commands: what the verb does
    brightness: int | None = None  # "to 40%", "40 percent"


def _action(verb: str) -> Action:
    v = verb.lower()
    if re.fullmatch(_OFF, v, re.IGNORECASE):
        return "off"
    if re.fullmatch(_ON, v, re.IGNORECASE):
        return "on"
    return "set"


def classify(text: str) -> Utterance:
    """The kind of ``text`` and the words that decided it."""
    command = _COMMAND.search(text)
    if command:
        verb = command.group("verb")
        # "to 40" is a brightness only for a light verb or with the word; "%" always is
        by_light = bool(_BRIGHTNESS_VERB.fullmatch(verb)) or "brightness" in text.lower()
        number = _PERCENT.search(text) or (_NUMBER.search(text) if by_light else None)
        brightness = min(100, int(number.group(1))) if number else None
        action = _action(verb)
        if brightness is not None or (action == "set" and by_light):
            action = "set"
        elif action == "set" or re.fullmatch(_OTHER, verb, re.IGNORECASE):
            action = "other"
        return Utterance(text, "command", f"command: verb {verb.lower()!r}", action, brightness)
    if _MEMORY.search(text):
        return Utterance(text, "memory", f"memory: {_MEMORY.search(text).group(1).lower()!r}")  # type: ignore[union-attr]
    question = _QUESTION.search(text)
    if question or text.rstrip().endswith("?"):
        why = f"opens with {question.group(0).strip().lower()!r}" if question else "ends with '?'"
        return Utterance(text, "question", f"state question: {why}")
    return Utterance(text, "chat", "chit-chat: no command verb and no question")


def words(text: str) -> list[str]:
    """Lower-case words, plurals folded ("lights" -> "light")."""
    out = []
    for w in _WORD.findall(text.lower()):
        out.append(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def _mentions(name: str, said: set[str]) -> bool:
    wanted = [w for w in words(name) if w not in _FILLER]
    return bool(wanted) and all(w in said for w in wanted)


@dataclass(frozen=True)
class Mention:
    entities: tuple[Entity, ...]
    areas: tuple[str, ...]
    domains: tuple[str, ...]
    reason: str
    plural: bool = False  # a domain was named in the plural ("the lights"): every one of them is meant


def mentions(text: str, house: House) -> Mention:
    """The entities, areas and domains of ``house`` that ``text`` names.

    An entity is named when every word of one of its names (or aliases) is in the text; when
    several are, the longest names win ("living room lamp" over "lamp"). A domain is named by its
    word ("lights" -> light); with exactly one entity of a named domain and no other match, that
    entity is meant.
    """
    said = set(words(text))
    scored: list[tuple[int, Entity]] = []
    for entity in house.entities:
        best = max((len(words(n)) for n in entity.names if _mentions(n, said)), default=0)
        if best:
            scored.append((best, entity))
    top = max((s for s, _ in scored), default=0)
    named = tuple(e for s, e in scored if s == top)
    areas = tuple(a for a in house.areas if _mentions(a, said))
    domains = tuple(d for d in house.domains if any(w in said for w in words(d.replace("_", " "))))
    raw = set(_WORD.findall(text.lower()))
    plural = any(d + "s" in raw or d + "es" in raw for d in domains)
    reason = []
    if named:
        reason.append("names " + ", ".join(repr(e.name) for e in named))
    if areas:
        reason.append("areas " + ", ".join(repr(a) for a in areas))
    if domains:
        reason.append("domains " + ", ".join(domains))
    if not named and len(domains) == 1 and not areas:
        only = [e for e in house.entities if e.domain == domains[0]]
        if len(only) == 1:
            named = (only[0],)
            reason.append(f"the only {domains[0]} is {only[0].name!r}")
    return Mention(named, areas, domains, "; ".join(reason) or "names nothing in the house", plural)
