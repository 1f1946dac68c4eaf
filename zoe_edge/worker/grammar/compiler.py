"""Schema to grammar in one call: lowering, then GBNF, each degraded feature logged once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from zoe_edge.worker.grammar.gbnf import Converter
from zoe_edge.worker.grammar.lowering import lower_schema

# the name the module had before it was a package: log configuration and tests filter on it
log = logging.getLogger("zoe_edge.worker.grammar")

# distinct degradation messages already logged (bounded: a client could send endless new schemas)
_LOGGED: set[str] = set()
_MAX_LOGGED = 4096


@dataclass(frozen=True)
class CompiledSchema:
    """A grammar for a schema. ``exact``: every value the grammar allows is valid under the schema
    (it may allow fewer); otherwise ``degraded`` says what it does not enforce, and ``effective``
    is the schema it does enforce (for tests and for checks)."""

    grammar: str
    exact: bool
    degraded: list[str]
    effective: dict[str, Any]


def note_degraded(notes: list[tuple[str, bool]], label: str = "") -> list[str]:
    """The notes as messages, each logged once per process (a warning when the grammar is looser)."""
    out = []
    for message, loose in notes:
        text = f"{label}{message}" + ("" if loose else " (narrowed)")
        out.append(text)
        if text not in _LOGGED:
            if len(_LOGGED) < _MAX_LOGGED:
                _LOGGED.add(text)
            if loose:
                log.warning("JSON schema: %s; the grammar does not enforce it, the output is checked after", text)
            else:
                log.info("JSON schema: %s", text)
    return out


def compile_schema(
    schema: Any, *, max_string: int | None = None, max_items: int | None = None, label: str = ""
) -> CompiledSchema:
    """The GBNF whose ``root`` is the JSON values of ``schema`` (as far as a grammar can say).

    Never fails on a valid JSON Schema; :class:`InvalidSchema` for anything else.
    """
    lowered = lower_schema(schema)
    conv = Converter(max_string=max_string, max_items=max_items)
    conv.add_defs(lowered.defs)
    conv.visit(lowered.core, "")  # type: ignore[arg-type]
    degraded = note_degraded(lowered.notes, label)
    return CompiledSchema(conv.grammar(), lowered.exact, degraded, lowered.effective)


def schema_grammar(schema: Any) -> str:
    """The GBNF for ``schema`` (``response_format``): :func:`compile_schema` without caps."""
    return compile_schema(schema).grammar


def unsupported_features(schema: Any) -> list[str]:
    """What the grammar for ``schema`` does not enforce exactly, as ``"<path>: <why>"``."""
    return [m for m, _ in lower_schema(schema).notes]
