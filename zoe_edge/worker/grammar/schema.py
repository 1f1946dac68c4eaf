"""JSON Schema's vocabulary as the grammar sees it: keyword tables, draft-7 spellings, shape checks, pointers.

Shared by the lowering (which turns a schema into a core schema) and the validator (which checks
values against the original schema), so that both read a schema the same way.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from zoe_edge.worker.grammar.errors import InvalidSchema

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
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
    }
)
# keywords the core handles (some only in part: see _Lowerer)
_ENFORCED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "items",
        "prefixItems",
        "additionalItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "enum",
        "const",
        "anyOf",
        "allOf",
        "oneOf",
        "not",
        "$ref",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    }
)
# keywords that constrain but that the grammar never enforces: ignored, with a note
_IGNORED = frozenset(
    {
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "contains",
        "minContains",
        "maxContains",
        "unevaluatedProperties",
        "unevaluatedItems",
        "$dynamicRef",
        "$recursiveRef",
    }
)
_TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")
# the branches of a schema without ``type`` (integer is a number)
_ALL_KINDS = ("null", "boolean", "object", "array", "number", "string")
_TYPE_KEYWORDS: dict[str, frozenset[str]] = {
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "array": frozenset({"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains"}),
    "object": frozenset(
        {
            "properties",
            "required",
            "additionalProperties",
            "patternProperties",
            "propertyNames",
            "minProperties",
            "maxProperties",
            "dependentRequired",
            "dependentSchemas",
            "dependencies",
        }
    ),
}
_SCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas", "$defs", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = (
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "additionalProperties",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
)
_COUNTS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# string formats the grammar can spell, with the lengths of their strings
_FORMAT_LENGTHS: dict[str, tuple[int, int]] = {
    "date": (10, 10),
    "time": (9, 18),
    "date-time": (20, 29),
    **{f"uuid{v}": (36, 36) for v in ("", "1", "2", "3", "4", "5")},
}
# what may not appear in a GBNF rule name
INVALID_RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_number(value) and value >= 0 and float(value).is_integer()


def _integral(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()


def modernise(schema: Any) -> Any:
    """A copy with draft-4/7 spellings in 2020-12 form: tuple ``items``, boolean exclusive bounds.

    ``items: [a, b]`` becomes ``prefixItems`` (with ``additionalItems`` as ``items``), and
    ``exclusiveMinimum: true`` next to ``minimum`` becomes ``exclusiveMinimum: <minimum>``.
    Anything else is copied as it is; values of ``enum``/``const``/annotations are not schemas.
    """
    if isinstance(schema, list):
        return [modernise(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in ("enum", "const", "default", "examples") else modernise(v) for k, v in schema.items()}
    if isinstance(out.get("items"), list) and "prefixItems" not in out:
        out["prefixItems"] = out.pop("items")
        if "additionalItems" in out:
            out["items"] = out.pop("additionalItems")
    for ex, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(ex), bool):
            if out[ex] and _is_number(out.get(bound)):
                out[ex] = out.pop(bound)
            else:
                del out[ex]
    return out


def _check_shape(schema: dict[str, Any], path: str) -> None:
    """:class:`InvalidSchema` when a keyword's value cannot be what JSON Schema says it is."""
    bad: list[str] = []

    def is_schema(value: Any) -> bool:
        return isinstance(value, dict | bool)

    types = schema.get("type")
    if "type" in schema:
        kinds = types if isinstance(types, list) else [types]
        if not kinds or not all(isinstance(t, str) and t in _TYPES for t in kinds):
            bad.append(f"{path}: type {json.dumps(types)[:80]} is not one of {', '.join(_TYPES)}")
    # the members of properties, patternProperties and the lists are checked where they are
    # lowered, so that the message names their own path
    for key in _SCHEMA_MAPS:
        value = schema.get(key)
        lowered_later = key in ("properties", "patternProperties")
        if key in schema and not (isinstance(value, dict) and (lowered_later or all(map(is_schema, value.values())))):
            bad.append(f"{path}: {key} must map names to schemas")
    for key in _SCHEMA_LISTS:
        if key in schema and not isinstance(schema[key], list):
            bad.append(f"{path}: {key} must be a list of schemas")
        elif key in ("allOf", "anyOf", "oneOf") and key in schema and not schema[key]:
            bad.append(f"{path}: {key} must not be empty")
    for key in (*_SCHEMA_ONE, "items"):
        if key in schema and not is_schema(schema[key]):
            bad.append(f"{path}: {key} must be a schema")
    for key in _COUNTS:
        if key in schema and not _is_count(schema[key]):
            bad.append(f"{path}: {key} must be a non-negative integer")
    for key in _BOUNDS:
        if key in schema and not (_is_number(schema[key]) and math.isfinite(schema[key])):
            bad.append(f"{path}: {key} must be a finite number")
    if "multipleOf" in schema and not (_is_number(schema["multipleOf"]) and 0 < schema["multipleOf"] < math.inf):
        bad.append(f"{path}: multipleOf must be a number above 0")
    required = schema.get("required")
    if "required" in schema and not (isinstance(required, list) and all(isinstance(n, str) for n in required)):
        bad.append(f"{path}: required must be a list of property names")
    for key in ("pattern", "format", "$ref"):
        if key in schema and not isinstance(schema[key], str):
            bad.append(f"{path}: {key} must be a string")
    if "enum" in schema and not isinstance(schema["enum"], list):
        bad.append(f"{path}: enum must be a list")
    if "uniqueItems" in schema and not isinstance(schema["uniqueItems"], bool):
        bad.append(f"{path}: uniqueItems must be true or false")
    dep = schema.get("dependentRequired")
    if "dependentRequired" in schema and not (
        isinstance(dep, dict) and all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in dep.values())
    ):
        bad.append(f"{path}: dependentRequired must map names to lists of names")
    if bad:
        raise InvalidSchema(bad)


def _pointer(ref: str) -> list[str] | None:
    """The JSON pointer of a local ``#...`` reference as parts; ``None`` for other references."""
    if not ref.startswith("#"):
        return None
    from urllib.parse import unquote

    body = unquote(ref[1:])
    if body == "":
        return []
    if not body.startswith("/"):
        return None  # "#name" is an $anchor
    return [p.replace("~1", "/").replace("~0", "~") for p in body[1:].split("/")]


def _walk(root: Any, parts: list[str]) -> Any:
    target = root
    for part in parts:
        if isinstance(target, dict):
            target = target[part]
        elif isinstance(target, list):
            target = target[int(part)]
        else:
            raise KeyError(part)
    return target


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
