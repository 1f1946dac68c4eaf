"""Reading ``models.yaml``: every failure is a :class:`RegistryError` with one line per problem."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from zoe_edge import validation
from zoe_edge.errors import RegistryError
from zoe_edge.registry.schema import Registry


def _describe(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "models":
        if len(parts) == 2:  # the entry's own cross-field checks
            return f"model {parts[1]!r}"
        return f"model {parts[1]!r}: field {'.'.join(parts[2:])!r}"
    if len(parts) >= 2 and parts[0] == "aliases":
        return f"alias {parts[1]!r}"
    return f"field {'.'.join(parts)!r}" if parts else "registry"


def parse_registry(data: Any, source: str = "models.yaml") -> Registry:
    """Validate already-parsed YAML; raises :class:`RegistryError` with one line per problem."""
    if not isinstance(data, Mapping):
        raise RegistryError(
            source, [f"top level must be a mapping with 'default' and 'models', got {type(data).__name__}"]
        )
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        lines = []
        for loc, msg in validation.problems(exc):
            if loc:
                lines.append(f"{_describe(loc)}: {msg}")
            else:  # the cross-field check joins its problems with "; "
                lines.extend(msg.split("; "))
        raise RegistryError(source, lines) from None


def load_registry(path: Path) -> Registry:
    """Read and validate ``models.yaml``; every failure is a :class:`RegistryError`, never a traceback."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(str(path), [f"not valid UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    except OSError as exc:
        raise RegistryError(str(path), [f"cannot read the registry: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RegistryError(str(path), [f"not valid YAML{where}: {problem}"]) from None
    except RecursionError:
        # PyYAML's composer recurses once per nesting level: a few thousand '[' exhaust the stack
        raise RegistryError(str(path), ["not valid YAML: nested too deeply"]) from None
    return parse_registry(data, str(path))
