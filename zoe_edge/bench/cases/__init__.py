"""The bench's case sets (package data) and their loaders: hallucination, Home-Assistant tool calls, Assist turns."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

from zoe_edge.bench.scoring import ExpectedCall

AssistKind = Literal["command", "question", "chat"]
HallucinationKind = Literal["fact", "unanswerable", "false_premise", "memory_present", "memory_absent"]


@dataclass(frozen=True)
class HallucinationCase:
    id: str
    kind: HallucinationKind
    question: str
    answers: tuple[str, ...]  # accepted aliases; empty: the right answer is an abstention
    notes: str | None = None
    quick: bool = False


@dataclass(frozen=True)
class ToolCase:
    id: str
    category: str
    user: str
    expected: tuple[ExpectedCall, ...]  # empty: a no-call case
    quick: bool = False


def _load(name: str) -> list[dict[str, Any]]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, list)
    return data


def hallucination_cases(quick: bool = False) -> list[HallucinationCase]:
    cases = [
        HallucinationCase(
            id=d["id"],
            kind=d["kind"],
            question=d["question"],
            answers=tuple(str(a) for a in d["answers"]),
            notes=d.get("notes"),
            quick=bool(d.get("quick", False)),
        )
        for d in _load("hallucination.yaml")
    ]
    return [c for c in cases if c.quick] if quick else cases


def tool_cases(quick: bool = False) -> list[ToolCase]:
    cases = []
    for d in _load("tools.yaml"):
        expected = tuple(
            ExpectedCall(
                e["name"], {k: tuple(v) for k, v in e.get("args", {}).items()}, frozenset(e.get("optional", []))
            )
            for e in d["expected"]
        )
        cases.append(ToolCase(d["id"], d["category"], d["user"], expected, bool(d.get("quick", False))))
    return [c for c in cases if c.quick] if quick else cases


@dataclass(frozen=True)
class AssistCase:
    """One Assist turn. ``expect``: entity id -> (state, brightness % or None) a command must leave;
    ``expect_area``: (area id, domain, state) for a command on an area; ``true``/``false``: phrases."""

    id: str
    kind: AssistKind
    user: str
    expect: tuple[tuple[str, str, int | None], ...] = ()
    expect_area: tuple[str, str, str] | None = None
    true: tuple[str, ...] = ()
    false: tuple[str, ...] = ()
    quick: bool = False


def assist_cases(quick: bool = False) -> list[AssistCase]:
    cases = []
    for d in _load("assist.yaml"):
        expect: list[tuple[str, str, int | None]] = []
        for entity_id, want in (d.get("expect") or {}).items():
            if isinstance(want, dict):
                expect.append((str(entity_id), str(want["state"]), int(want["brightness_pct"])))
            else:
                expect.append((str(entity_id), str(want), None))
        area = d.get("expect_area")
        cases.append(
            AssistCase(
                id=d["id"],
                kind=d["kind"],
                user=d["user"],
                expect=tuple(expect),
                expect_area=(str(area["area"]), str(area["domain"]), str(area["state"])) if area else None,
                true=tuple(str(p) for p in d.get("true") or ()),
                false=tuple(str(p) for p in d.get("false") or ()),
                quick=bool(d.get("quick", False)),
            )
        )
    return [c for c in cases if c.quick] if quick else cases
