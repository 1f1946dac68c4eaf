"""Pydantic errors as short lines a person can act on, shared by the registry loader and the fronts."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def _is_union_tag(part: int | str) -> bool:
    # pydantic names union branches ("int", "literal['auto']", "list[str]") in the location; nobody wrote those
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool", "dict", "list"} or "[" in part or part.startswith("function-")
    )


def clean_location(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    return tuple(p for p in loc if not _is_union_tag(p))


def shown(value: Any, limit: int = 80) -> str:
    """The offending value as the message shows it: a 10 kB string would bury the line it belongs to."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def problems(exc: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    """One (location, message) per field: union branches that failed together become one line."""
    merged: dict[tuple[int | str, ...], list[str]] = {}
    shown_values: dict[tuple[int | str, ...], Any] = {}
    for err in exc.errors(include_url=False):
        loc = clean_location(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        messages = merged.setdefault(loc, [])
        if msg not in messages:
            messages.append(msg)
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(err.get("input"), dict | list):
            shown_values.setdefault(loc, err.get("input"))
    out = []
    for loc, messages in merged.items():
        text = " or ".join(messages)
        if loc in shown_values and shown(shown_values[loc]) not in text:
            text = f"{text} (got {shown(shown_values[loc])})"
        out.append((loc, text))
    return out
