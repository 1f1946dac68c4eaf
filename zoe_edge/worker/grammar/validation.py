"""A JSON Schema 2020-12 validator: checks a value against the ORIGINAL schema.

The last line of defence behind the grammar: what a degraded grammar did not enforce, and calls
parsed from free text, are checked here before they reach a client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from zoe_edge.worker.grammar.patterns import _python_regex
from zoe_edge.worker.grammar.schema import _is_number, _pointer, _walk, modernise

_TIME_RX = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{3})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
_DATE_RX = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_FORMAT_RX: dict[str, re.Pattern[str]] = {
    "date": re.compile(_DATE_RX),
    "time": re.compile(_TIME_RX),
    "date-time": re.compile(_DATE_RX + "T" + _TIME_RX),
    **{
        f"uuid{v}": re.compile("[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
        for v in ("", "1", "2", "3", "4", "5")
    },
}


def _canon(value: Any) -> Any:
    """A hashable form in which JSON-equal values are equal (1 == 1.0, but true != 1)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("n", int(value) if isinstance(value, float) and value.is_integer() else value)
    if isinstance(value, list):
        return ("a", tuple(_canon(v) for v in value))
    if isinstance(value, dict):
        return ("o", tuple(sorted((k, _canon(v)) for k, v in value.items())))
    return ("?", repr(value))


def _json_equal(a: Any, b: Any) -> bool:
    return bool(_canon(a) == _canon(b))


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        # JSON Schema: an integer is any number with no fractional part, 1.0 included
        return _is_number(value) and (isinstance(value, int) or float(value).is_integer())
    if kind == "number":
        return _is_number(value)
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


def _num(schema: dict[str, Any], key: str) -> Any:
    value = schema.get(key)
    return value if _is_number(value) else None


def _multiple(value: Any, step: Any) -> bool:
    try:
        return Decimal(str(value)) % Decimal(str(step)) == 0
    except (InvalidOperation, ValueError):
        return True  # beyond what Decimal can divide: not checked


def validate(value: Any, schema: Any, root: Any = None, path: str = "$") -> list[str]:
    """Problems with ``value`` under ``schema``: every keyword of draft 2020-12 (and draft-7's
    spellings) that constrains a value, except ``unevaluated*``, ``$dynamicRef``, remote ``$ref``
    and formats other than date, time, date-time and uuid, which pass."""
    schema = modernise(schema)
    return _validate(value, schema, schema if root is None else modernise(root), path)


def _validate(value: Any, schema: Any, root: Any, path: str, depth: int = 0) -> list[str]:
    if schema is True or schema == {}:
        return []
    if schema is False or not isinstance(schema, dict):
        return [f"{path}: no value is allowed here"]
    if depth > 100:
        return []  # a $ref loop with no value in between: nothing more to check

    def sub(v: Any, s: Any, p: str, d: int = depth) -> list[str]:
        return _validate(v, s, root, p, d)

    errors: list[str] = []
    ref = schema.get("$ref")
    if isinstance(ref, str):
        parts = _pointer(ref)
        if parts is not None:
            try:
                target = _walk(root, parts)
            except (KeyError, IndexError, ValueError, TypeError):
                return [f"{path}: unresolvable $ref {ref!r}"]
            errors += sub(value, target, path, depth + 1)
    types = schema.get("type")
    if types is not None:
        kinds = types if isinstance(types, list) else [types]
        if not any(_type_ok(value, k) for k in kinds):
            return [*errors, f"{path}: expected {' or '.join(map(str, kinds))}, got {json.dumps(value)[:60]}"]
    if "const" in schema and not _json_equal(value, schema["const"]):
        errors.append(f"{path}: must be {json.dumps(schema['const'])}")
    if isinstance(schema.get("enum"), list) and not any(_json_equal(value, e) for e in schema["enum"]):
        errors.append(f"{path}: must be one of {json.dumps(schema['enum'])[:200]}")
    if isinstance(schema.get("anyOf"), list) and all(sub(value, s, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if isinstance(schema.get("oneOf"), list):
        matched = sum(not sub(value, s, path) for s in schema["oneOf"])
        if matched != 1:
            errors.append(f"{path}: matches {matched} of oneOf, not exactly one")
    for s in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
        errors += sub(value, s, path)
    if "not" in schema and not sub(value, schema["not"], path):
        errors.append(f"{path}: matches the schema in 'not'")
    if "if" in schema:
        branch = "then" if not sub(value, schema["if"], path) else "else"
        if branch in schema:
            errors += sub(value, schema[branch], path)
    if _is_number(value):
        errors += _number_problems(value, schema, path)
    if isinstance(value, str):
        errors += _string_problems(value, schema, path)
    if isinstance(value, dict):
        errors += _object_problems(value, schema, path, sub)
    if isinstance(value, list):
        errors += _array_problems(value, schema, path, sub)
    return errors


def _number_problems(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if (b := _num(schema, "minimum")) is not None and value < b:
        errors.append(f"{path}: {value} < minimum {b}")
    if (b := _num(schema, "maximum")) is not None and value > b:
        errors.append(f"{path}: {value} > maximum {b}")
    if (b := _num(schema, "exclusiveMinimum")) is not None and value <= b:
        errors.append(f"{path}: {value} <= exclusiveMinimum {b}")
    if (b := _num(schema, "exclusiveMaximum")) is not None and value >= b:
        errors.append(f"{path}: {value} >= exclusiveMaximum {b}")
    if (b := _num(schema, "multipleOf")) is not None and b > 0 and not _multiple(value, b):
        errors.append(f"{path}: {value} is not a multiple of {b}")
    return errors


def _string_problems(value: str, schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if (n := _num(schema, "minLength")) is not None and len(value) < n:
        errors.append(f"{path}: shorter than {n}")
    if (n := _num(schema, "maxLength")) is not None and len(value) > n:
        errors.append(f"{path}: longer than {n}")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        rx = _python_regex(pattern)
        if rx is not None and not rx.search(value):
            errors.append(f"{path}: does not match {pattern!r}")
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMAT_RX and not _FORMAT_RX[fmt].fullmatch(value):
        errors.append(f"{path}: not a {fmt}")
    return errors


def _object_problems(
    value: dict[str, Any], schema: dict[str, Any], path: str, sub: Callable[..., list[str]]
) -> list[str]:
    errors: list[str] = []
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    patterns = schema.get("patternProperties") if isinstance(schema.get("patternProperties"), dict) else {}
    assert isinstance(props, dict) and isinstance(patterns, dict)
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    assert isinstance(required, list)
    for name in required:
        if name not in value:
            errors.append(f"{path}: missing required property {name!r}")
    additional = schema.get("additionalProperties", True)
    for name, item in value.items():
        where = f"{path}.{name}"
        matched = name in props
        if matched:
            errors += sub(item, props[name], where)
        for pat, s in patterns.items():
            rx = _python_regex(pat)
            if rx is not None and rx.search(name):
                matched = True
                errors += sub(item, s, where)
        if not matched:
            if additional is False:
                errors.append(f"{path}: unexpected property {name!r}")
            elif isinstance(additional, dict):
                errors += sub(item, additional, where)
        if "propertyNames" in schema and sub(name, schema["propertyNames"], where):
            errors.append(f"{path}: property name {name!r} does not match propertyNames")
    if (n := _num(schema, "minProperties")) is not None and len(value) < n:
        errors.append(f"{path}: fewer than {n} properties")
    if (n := _num(schema, "maxProperties")) is not None and len(value) > n:
        errors.append(f"{path}: more than {n} properties")
    dependent: dict[str, Any] = {}
    for key in ("dependencies", "dependentRequired", "dependentSchemas"):
        if isinstance(schema.get(key), dict):
            dependent.update(schema[key])
    for name, need in dependent.items():
        if name not in value:
            continue
        if isinstance(need, list):
            errors += [f"{path}: {name!r} requires {n!r}" for n in need if n not in value]
        else:
            errors += sub(value, need, path)
    return errors


def _array_problems(value: list[Any], schema: dict[str, Any], path: str, sub: Callable[..., list[str]]) -> list[str]:
    errors: list[str] = []
    if (n := _num(schema, "minItems")) is not None and len(value) < n:
        errors.append(f"{path}: fewer than {n} items")
    if (n := _num(schema, "maxItems")) is not None and len(value) > n:
        errors.append(f"{path}: more than {n} items")
    prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
    assert isinstance(prefix, list)
    items = schema.get("items", True)
    for i, item in enumerate(value):
        if i < len(prefix):
            errors += sub(item, prefix[i], f"{path}[{i}]")
        elif isinstance(items, dict | bool):
            errors += sub(item, items, f"{path}[{i}]")
    if schema.get("uniqueItems") is True and len({_canon(v) for v in value}) < len(value):
        errors.append(f"{path}: items are not unique")
    if "contains" in schema:
        hits = sum(not sub(v, schema["contains"], path) for v in value)
        lo = _num(schema, "minContains")
        hi = _num(schema, "maxContains")
        if hits < (1 if lo is None else lo):
            errors.append(f"{path}: too few items match 'contains'")
        if hi is not None and hits > hi:
            errors.append(f"{path}: too many items match 'contains'")
    return errors
