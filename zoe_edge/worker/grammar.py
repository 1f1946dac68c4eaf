"""JSON schema -> llama.cpp GBNF grammar, with the checks a grammar alone cannot give.

Pure functions, usable without a model. Three jobs:

* :func:`unsupported_features` names every schema feature llama-cpp-python's converter would
  ignore or mistranslate, so a front can refuse the schema instead of constraining the output to
  something the client did not ask for;
* :class:`Converter` is llama-cpp-python's converter plus integer/number ranges (``minimum`` and
  friends), which the upstream Python copy drops and which Home Assistant's tool schemas use
  (brightness 0-100);
* :func:`validate` checks a value against the subset of JSON Schema the grammar enforces, the
  last line of defence for output that did not come from a grammar (a parsed free-text call).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from typing import Any

from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

# keywords that describe but do not constrain: dropping them changes nothing about valid output
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    }
)
_ENFORCED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "allOf",
        "$ref",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
)
_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
_JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


class UnsupportedSchema(ValueError):
    """The schema uses features the grammar cannot enforce; ``features`` names each one with its path."""

    def __init__(self, features: list[str]) -> None:
        super().__init__("; ".join(features))
        self.features = features


def normalise(schema: Any) -> Any:
    """A copy where ``type: [a, b]`` with other keywords becomes ``anyOf`` of one-type schemas.

    The upstream converter turns a type list into a union of bare types, silently dropping
    ``minimum``, ``enum`` and the rest; splitting first keeps every keyword on each branch.
    """
    if isinstance(schema, list):
        return [normalise(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: normalise(v) if k not in ("enum", "const", "default", "examples") else v for k, v in schema.items()}
    types = out.get("type")
    if isinstance(types, list):
        rest = {k: v for k, v in out.items() if k != "type"}
        if len(types) == 1:
            return {**rest, "type": types[0]}
        return {"anyOf": [{**rest, "type": t} for t in types]}
    return out


def _integral(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()


def unsupported_features(schema: Any, path: str = "$") -> list[str]:
    """Every feature of ``schema`` the grammar would not enforce, as ``"<path>: <why>"``."""
    problems: list[str] = []
    if isinstance(schema, bool):
        return [f"{path}: boolean schemas"]
    if not isinstance(schema, dict):
        return [f"{path}: a schema must be an object"]
    for key in schema:
        if key not in _ANNOTATIONS and key not in _ENFORCED:
            problems.append(f"{path}: keyword '{key}'")
    types = schema.get("type")
    for t in types if isinstance(types, list) else [types] if types is not None else []:
        if t not in _TYPES:
            problems.append(f"{path}: type {t!r}")
    fmt = schema.get("format")
    if fmt is not None and fmt not in _FORMATS:
        problems.append(f"{path}: format {fmt!r}")
    pattern = schema.get("pattern")
    if pattern is not None and not (isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")):
        problems.append(f"{path}: pattern without ^...$ anchors")
    if (pattern is not None or fmt is not None) and ("minLength" in schema or "maxLength" in schema):
        problems.append(f"{path}: minLength/maxLength together with pattern or format")
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        problems.append(f"{path}: $ref {ref!r} (only local '#/...' references)")
    if any(k in schema for k in _BOUNDS):
        kinds = set(types) if isinstance(types, list) else {types}
        # on other types the bounds are no-ops by the spec; without a type the converter cannot bound
        if types is None:
            problems.append(f"{path}: minimum/maximum without type integer or number")
        for key in _BOUNDS:
            value = schema.get(key)
            if key in schema and (isinstance(value, bool) or not isinstance(value, int | float)):
                problems.append(f"{path}: {key} must be a number")
            elif key in schema and "number" in kinds:
                if key.startswith("exclusive"):
                    problems.append(f"{path}: {key} on a number (use minimum/maximum)")
                elif not _integral(value):
                    problems.append(f"{path}: {key} {value} on a number (only whole-number bounds)")
    if "allOf" in schema and not all(
        isinstance(s, dict) and ("properties" in s or "$ref" in s) for s in schema["allOf"]
    ):
        problems.append(f"{path}: allOf other than a merge of object properties")
    props = schema.get("properties")
    if isinstance(props, dict):
        for name in schema.get("required", []):
            if name not in props:
                problems.append(f"{path}: required property {name!r} is not in properties")
        for name, sub in props.items():
            problems += unsupported_features(sub, f"{path}.{name}")
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        problems += unsupported_features(additional, f"{path}.additionalProperties")
    items = schema.get("items")
    if isinstance(items, dict):
        problems += unsupported_features(items, f"{path}[]")
    for key in ("prefixItems", "anyOf", "allOf"):
        subs = items if key == "prefixItems" and isinstance(items, list) else schema.get(key)
        if isinstance(subs, list):
            for i, sub in enumerate(subs):
                problems += unsupported_features(sub, f"{path}.{key}[{i}]")
    for key in ("$defs", "definitions"):
        defs = schema.get(key)
        if isinstance(defs, dict):
            for name, sub in defs.items():
                problems += unsupported_features(sub, f"{path}.{key}.{name}")
    return problems


# --- numeric ranges as grammar ------------------------------------------------------------------


def _same_length(lo: str, hi: str) -> str:
    """Digit strings of one length from ``lo`` to ``hi`` inclusive."""
    n = len(lo) - 1
    if lo == hi:
        return f'"{lo}"'
    if n == 0:
        return f"[{lo}-{hi}]"
    if lo[1:] == "0" * n and hi[1:] == "9" * n:
        return f"[{lo[0]}-{hi[0]}] [0-9]{{{n}}}"
    if lo[0] == hi[0]:
        return f'"{lo[0]}" ({_same_length(lo[1:], hi[1:])})'
    parts = [f'"{lo[0]}" ({_same_length(lo[1:], "9" * n)})']
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}] [0-9]{{{n}}}")
    parts.append(f'"{hi[0]}" ({_same_length("0" * n, hi[1:])})')
    return " | ".join(parts)


def _naturals(lo: int, hi: int | None) -> str:
    """Integers ``lo <= x <= hi`` (``hi=None``: unbounded) for ``lo >= 0``, without leading zeros."""
    width = len(str(lo))
    if hi is None:
        return f"({_same_length(str(lo), '9' * width)}) | [1-9] [0-9]{{{width},}}"
    parts = []
    for d in range(width, len(str(hi)) + 1):
        a = max(lo, 10 ** (d - 1) if d > 1 else 0)
        b = min(hi, 10**d - 1)
        parts.append(f"({_same_length(str(a), str(b))})")
    return " | ".join(parts)


def _signed_range(
    lo: int | None, hi: int | None, what: str, magnitude: Callable[[int, int | None], str], smallest_negative: int
) -> str:
    """``[lo, hi]`` split at zero: non-negative magnitudes, and "-" before the negative ones.

    ``smallest_negative`` is the least magnitude after a minus sign: 1 for integers (no "-0"),
    0 for decimals (``-0.5`` is a number).
    """
    if lo is not None and hi is not None and lo > hi:
        raise UnsupportedSchema([f"no {what} lies between {lo} and {hi}"])
    alts = []
    if hi is None or hi >= 0:
        alts.append(magnitude(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo < 0:
        start = smallest_negative if hi is None or hi >= 0 else -hi
        alts.append(f'"-" ({magnitude(start, None if lo is None else -lo)})')
    return " | ".join(f"({a})" for a in alts)


def integer_range_rule(lo: int | None, hi: int | None) -> str:
    """GBNF alternatives for the JSON integers in ``[lo, hi]`` (either bound may be open)."""
    return _signed_range(lo, hi, "integer", _naturals, 1)


def _magnitudes(lo: int, hi: int | None) -> str:
    """Non-negative decimals in ``[lo, hi]`` for whole-number bounds (no exponent form)."""
    frac = '("." [0-9]+)?'
    if hi is None:
        return f"({_naturals(lo, None)}) {frac}"
    alts = [f'"{hi}" ("." "0"+)?']
    if hi > lo:
        alts.insert(0, f"({_naturals(lo, hi - 1)}) {frac}")
    return " | ".join(alts)


def number_range_rule(lo: int | None, hi: int | None) -> str:
    """GBNF alternatives for JSON numbers in ``[lo, hi]`` with whole-number bounds."""
    return _signed_range(lo, hi, "number", _magnitudes, 0)


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    lo: int | None = None
    hi: int | None = None
    if "minimum" in schema:
        lo = math.ceil(schema["minimum"])
    if "exclusiveMinimum" in schema:
        ex = math.floor(schema["exclusiveMinimum"]) + 1
        lo = ex if lo is None else max(lo, ex)
    if "maximum" in schema:
        hi = math.floor(schema["maximum"])
    if "exclusiveMaximum" in schema:
        ex = math.ceil(schema["exclusiveMaximum"]) - 1
        hi = ex if hi is None else min(hi, ex)
    return lo, hi


class Converter(SchemaConverter):
    """llama-cpp-python's converter with numeric ranges; everything else is upstream's."""

    def __init__(
        self, prop_order: list[str] | None = None, max_string: int | None = None, max_items: int | None = None
    ) -> None:
        order = {name: i for i, name in enumerate(prop_order or [])}
        super().__init__(prop_order=order, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]
        self.max_string = max_string
        self.max_items = max_items

    def visit(self, schema: dict[str, Any], name: str) -> str:
        kind = schema.get("type")
        free = not any(
            k in schema for k in ("maxLength", "pattern", "format", "enum", "const", "anyOf", "oneOf", "$ref")
        )
        if kind == "string" and free and self.max_string is not None:
            # a narrower language, never a wider one: every capped string is still schema-valid
            schema = {**schema, "maxLength": max(self.max_string, schema.get("minLength", 0))}
        if kind == "array" and "maxItems" not in schema and "prefixItems" not in schema and self.max_items is not None:
            schema = {**schema, "maxItems": max(self.max_items, schema.get("minItems", 0))}
        plain = not any(k in schema for k in ("enum", "const", "anyOf", "oneOf", "$ref"))
        if kind in ("integer", "number") and plain and any(k in schema for k in _BOUNDS):
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            if kind == "integer":
                body = integer_range_rule(*integer_bounds(schema))
            else:
                lo, hi = schema.get("minimum"), schema.get("maximum")
                body = number_range_rule(None if lo is None else int(lo), None if hi is None else int(hi))
            return str(self._add_rule(rule_name, f"({body}) space"))  # type: ignore[no-untyped-call]
        return str(super().visit(schema, name))  # type: ignore[no-untyped-call]

    def add_rule(self, name: str, rule: str) -> str:
        return str(self._add_rule(name, rule))  # type: ignore[no-untyped-call]

    def grammar(self) -> str:
        if "char" in self._rules:
            # upstream lets raw control characters into strings, which JSON forbids: json.loads fails
            self._rules["char"] = _JSON_CHAR
        return str(self.format_grammar())  # type: ignore[no-untyped-call]


def checked(schema: Any) -> dict[str, Any]:
    """The normalised schema, or :class:`UnsupportedSchema` naming what the grammar cannot enforce."""
    if not isinstance(schema, dict):
        raise UnsupportedSchema(["$: a schema must be an object"])
    norm = normalise(schema)
    problems = unsupported_features(norm)
    if problems:
        raise UnsupportedSchema(problems)
    return dict(norm)


def schema_grammar(schema: dict[str, Any]) -> str:
    """The GBNF whose ``root`` is exactly the JSON values the schema allows (after :func:`checked`)."""
    conv = Converter()
    resolved = conv.resolve_refs(copy.deepcopy(checked(schema)), "schema")
    conv.visit(resolved, "")
    return conv.grammar()


# --- validation ------------------------------------------------------------------------------


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "null":
        return value is None
    return False


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def validate(value: Any, schema: Any, root: Any = None, path: str = "$") -> list[str]:
    """Problems with ``value`` under ``schema`` (the subset :func:`unsupported_features` allows)."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return []
    if schema is False or not isinstance(schema, dict):
        return [f"{path}: no value is allowed here"]
    if "$ref" in schema:
        try:
            return validate(value, _resolve(schema["$ref"], root), root, path)
        except (KeyError, TypeError):
            return [f"{path}: unresolvable $ref {schema['$ref']!r}"]
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        kinds = types if isinstance(types, list) else [types]
        if not any(_type_ok(value, k) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {json.dumps(value)[:60]}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {json.dumps(schema['const'])}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {json.dumps(schema['enum'])}")
    if "anyOf" in schema and all(validate(value, s, root, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    for sub in schema.get("allOf", []):
        errors += validate(value, sub, root, path)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: {value} >= exclusiveMaximum {schema['exclusiveMaximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing required property {name!r}")
        additional = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                errors += validate(item, props[name], root, f"{path}.{name}")
            elif additional is False:
                errors.append(f"{path}: unexpected property {name!r}")
            elif isinstance(additional, dict):
                errors += validate(item, additional, root, f"{path}.{name}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        prefix = schema.get("prefixItems") or (schema["items"] if isinstance(schema.get("items"), list) else [])
        for i, item in enumerate(value):
            if i < len(prefix):
                errors += validate(item, prefix[i], root, f"{path}[{i}]")
            elif isinstance(schema.get("items"), dict):
                errors += validate(item, schema["items"], root, f"{path}[{i}]")
    return errors
