"""The bench's case sets (package data) and their loaders: hallucination and Home-Assistant tool calls."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

from zoe_edge.bench.scoring import ExpectedCall

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
