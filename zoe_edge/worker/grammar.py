"""JSON schema -> llama.cpp GBNF grammar, with the checks a grammar alone cannot give.

Pure functions, usable without a model. The pipeline:

* :func:`lower_schema` rewrites any JSON Schema (draft 2020-12, plus the common draft-7 spellings)
  into a small *core* schema the grammar can enforce exactly: one type per branch, ``anyOf``,
  ``enum``, local ``$ref``, and the keywords of each type. ``allOf`` is merged, ``oneOf`` becomes
  ``anyOf``, a schema without ``type`` is every type its keywords allow (``{}``: any JSON value).
  What the core cannot say *degrades*: it is left out (the grammar is looser than the schema, and
  ``exact`` is false) or narrowed to a subset that is still schema-valid. Each degradation is
  named with its path; none is an error. Only something that is not a JSON Schema at all raises
  :class:`InvalidSchema`.
* :class:`Converter` turns core schemas into GBNF. It keeps llama-cpp-python's rule names and
  primitives, adds integer/number ranges (``minimum`` and friends, which Home Assistant's tool
  schemas use), and fixes what upstream gets wrong (see the notes on each method).
* :func:`compile_schema` is both in one call, logging each degraded feature once.
* :func:`validate` checks a value against the ORIGINAL schema, including what the grammar did not
  enforce: the last line of defence for output from a degraded grammar or from free text.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from llama_cpp.llama_grammar import (
    PRIMITIVE_RULES,
    RESERVED_NAMES,
    STRING_FORMAT_RULES,
    SchemaConverter,
    _build_repetition,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_constants as _sre
    import sre_parse as _sre_parse

log = logging.getLogger(__name__)

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
# a JSON string character: upstream lets raw control characters in (json.loads fails on them) and
# allows lone UTF-16 surrogate escapes, which break minLength (a pair is two chars but one code point)
_JSON_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))'
)
# upstream's exponent takes up to 16 digits, and json.loads turns 1e999999 into inf
_NUMBER = '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? [0-9] [0-9]?)? space'
# at most this many branches from distributing allOf over anyOf before we give up on merging
_MAX_BRANCHES = 64
# distinct degradation messages already logged (bounded: a client could send endless new schemas)
_LOGGED: set[str] = set()
_MAX_LOGGED = 4096


class UnsupportedSchema(ValueError):
    """A schema problem; ``features`` names each one with its path."""

    def __init__(self, features: list[str]) -> None:
        super().__init__("; ".join(features))
        self.features = features


class InvalidSchema(UnsupportedSchema):
    """Not a JSON Schema at all (a string where a schema must be, ``minimum: "x"``): a client error."""


Core = dict[str, Any] | bool


# --- lowering: any JSON Schema -> a core schema --------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_number(value) and value >= 0 and float(value).is_integer()


def _bounded(kind: str, lo: Any, hi: Any) -> dict[str, Any] | bool:
    """A numeric core schema with the bounds given; ``False`` (no value) when they cross."""
    if lo is not None and hi is not None and lo > hi:
        return False
    core: dict[str, Any] = {"type": kind}
    if lo is not None:
        core["minimum"] = lo
    if hi is not None:
        core["maximum"] = hi
    return core


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


@dataclass
class Lowered:
    """A core schema with its definitions (``#/$defs/<name>``) and what did not survive lowering.

    ``notes``: ``(message, loose)``; loose means the grammar allows values the schema rejects,
    otherwise it only allows fewer (still schema-valid) values.
    """

    core: Core
    defs: dict[str, Core] = field(default_factory=dict)
    notes: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not any(loose for _, loose in self.notes)

    @property
    def effective(self) -> dict[str, Any]:
        """The core as a JSON Schema :func:`validate` reads (``false`` stays ``{"not": {}}``)."""
        root: dict[str, Any] = dict(self.core) if isinstance(self.core, dict) else {"not": {}}
        if self.defs:
            root["$defs"] = {n: ({"not": {}} if d is False else d) for n, d in self.defs.items()}
        return root


class _Lowerer:
    def __init__(self, root: Any, prefix: str) -> None:
        self.root = root
        self.prefix = prefix
        self.defs: dict[str, Core] = {}
        self.ref_names: dict[str, str] = {}
        self.pending: dict[str, int] = {}  # pointer -> container depth when its lowering began
        self.depth = 0  # how many arrays/objects we are inside
        self.inlined = 0  # how many $refs intersect() is inside
        self.notes: list[tuple[str, bool]] = []

    def note(self, message: str, loose: bool = True) -> None:
        if (message, loose) not in self.notes:
            self.notes.append((message, loose))

    def ok(self, value: Any, core: Core) -> bool:
        """Whether ``value`` is in ``core`` (references to definitions still being lowered: no)."""
        if core is False:
            return False
        return not _validate(value, core, {"$defs": self.defs}, "$")

    # --- the schema ----------------------------------------------------------------------------

    def lower(self, schema: Any, path: str) -> Core:
        if schema is True:
            return {}
        if schema is False:
            return False
        if not isinstance(schema, dict):
            raise InvalidSchema([f"{path}: a schema must be an object or a boolean, not {json.dumps(schema)[:60]}"])
        _check_shape(schema, path)
        for key in schema:
            if key in _IGNORED:
                self.note(f"{path}: keyword '{key}' is not enforced")
        parts: list[Core] = [self.local(schema, path)]
        if "$ref" in schema:
            parts.append(self.ref(schema["$ref"], path))
        for i, sub in enumerate(schema.get("allOf", [])):
            parts.append(self.lower(sub, f"{path}.allOf[{i}]"))
        if "anyOf" in schema:
            parts.append(self.union([self.lower(s, f"{path}.anyOf[{i}]") for i, s in enumerate(schema["anyOf"])]))
        if "oneOf" in schema:
            parts.append(self.one_of(schema["oneOf"], path))
        result = parts[0]
        for part in parts[1:]:
            result = self.intersect(result, part, path)
        if "not" in schema:
            result = self.negate(result, schema["not"], path)
        return result

    def negate(self, core: Core, sub: Any, path: str) -> Core:
        if sub is True or sub == {}:
            return False
        if sub is False:
            return core
        if isinstance(core, dict) and "enum" in core:
            # a finite set: drop the values ``not`` excludes, exactly
            kept = [v for v in core["enum"] if _validate(v, sub, self.root, path)]
            return {"enum": kept} if kept else False
        self.lower(sub, f"{path}.not")  # still a schema: malformed ones are still errors
        self.note(f"{path}: keyword 'not' is not enforced")
        return core

    def one_of(self, subs: list[Any], path: str) -> Core:
        branches = [self.lower(s, f"{path}.oneOf[{i}]") for i, s in enumerate(subs)]
        live = [b for b in branches if b is not False]
        if any(not self.disjoint(a, b) for i, a in enumerate(live) for b in live[i + 1 :]):
            self.note(f"{path}: keyword 'oneOf' is enforced as anyOf (its branches may overlap)")
        return self.union(live)

    def local(self, schema: dict[str, Any], path: str) -> Core:
        """``type``, ``enum``/``const`` and the keywords of each type."""
        types = schema.get("type")
        if types is None:
            if any(k in schema for ks in _TYPE_KEYWORDS.values() for k in ks):
                kinds: list[str] = list(_ALL_KINDS)
            else:
                kinds = []
        else:
            kinds = list(dict.fromkeys(types if isinstance(types, list) else [types]))
            if "number" in kinds and "integer" in kinds:
                kinds.remove("integer")
        core: Core = self.union([self.typed(t, schema, path) for t in kinds]) if kinds else {}
        if "const" in schema:
            core = self.intersect({"enum": [schema["const"]]}, core, path)
        if "enum" in schema:
            core = self.intersect({"enum": list(schema["enum"])}, core, path) if schema["enum"] else False
        return core

    def typed(self, kind: str, s: dict[str, Any], path: str) -> Core:
        if kind in ("null", "boolean"):
            return {"type": kind}
        if kind in ("integer", "number"):
            return self.numeric(kind, s, path)
        if kind == "string":
            return self.string(s, path)
        if kind == "array":
            return self.array(s, path)
        return self.object(s, path)

    def numeric(self, kind: str, s: dict[str, Any], path: str) -> Core:
        step = s.get("multipleOf")
        if step is not None:
            if Decimal(1) % Decimal(str(step)) == 0:  # every integer is a multiple
                if kind == "number":
                    if step == 1:
                        kind = "integer"
                    else:
                        self.note(f"{path}: keyword 'multipleOf' is not enforced")
            else:
                self.note(f"{path}: keyword 'multipleOf' is not enforced")
        lo, hi = integer_bounds(s)
        if kind == "number":
            lo_real = max([s[k] for k in ("minimum", "exclusiveMinimum") if k in s], default=None)
            hi_real = min([s[k] for k in ("maximum", "exclusiveMaximum") if k in s], default=None)
            inclusive_lo = "exclusiveMinimum" not in s or s.get("minimum", -math.inf) > s["exclusiveMinimum"]
            inclusive_hi = "exclusiveMaximum" not in s or s.get("maximum", math.inf) < s["exclusiveMaximum"]
            if lo_real is not None and hi_real is not None and lo_real == hi_real:
                return {"enum": [lo_real]} if inclusive_lo and inclusive_hi else False
            if lo_real is not None and hi_real is not None and lo_real > hi_real:
                return False
            rounded = any(k in s for k in ("exclusiveMinimum", "exclusiveMaximum")) or any(
                not _integral(s[k]) for k in ("minimum", "maximum") if k in s
            )
            if lo is not None and hi is not None and lo > hi:
                # no whole number inside: the grammar offers the midpoint, a valid number
                self.note(
                    f"{path}: number bounds with no whole number between them: only the midpoint is generated", False
                )
                assert lo_real is not None and hi_real is not None
                return {"enum": [(lo_real + hi_real) / 2]}
            if rounded:
                self.note(
                    f"{path}: exclusive or fractional bounds on a number are rounded inward to whole numbers", False
                )
            return _bounded(kind, lo, hi)
        return _bounded(kind, lo, hi)

    def string(self, s: dict[str, Any], path: str) -> Core:
        core: dict[str, Any] = {"type": "string"}
        for key in ("minLength", "maxLength", "pattern", "format"):
            if key in s:
                core[key] = int(s[key]) if key in _COUNTS else s[key]
        return self.finish_string(core, path)

    def finish_string(self, core: dict[str, Any], path: str) -> Core:
        lo, hi = core.get("minLength", 0), core.get("maxLength")
        if hi is not None and lo > hi:
            return False
        if lo == 0:
            core.pop("minLength", None)
        pattern, fmt = core.get("pattern"), core.get("format")
        if pattern is not None:
            try:
                regex_rule(pattern)
            except _Untranslatable as exc:
                self.note(f"{path}: pattern {pattern!r} is not enforced ({exc})")
                del core["pattern"]
                pattern = None
        if pattern is not None:
            if fmt is not None:
                self.note(f"{path}: format {fmt!r} next to a pattern is not enforced")
                del core["format"]
            if "minLength" in core or "maxLength" in core:
                self.note(f"{path}: minLength/maxLength next to a pattern are not enforced")
                core.pop("minLength", None)
                core.pop("maxLength", None)
            return core
        if fmt is None:
            return core
        if fmt not in _FORMAT_LENGTHS:
            self.note(f"{path}: format {fmt!r} is not enforced")
            del core["format"]
            return core
        flo, fhi = _FORMAT_LENGTHS[fmt]
        if "minLength" in core or "maxLength" in core:
            if lo <= flo and (hi is None or fhi <= hi):
                core.pop("minLength", None)
                core.pop("maxLength", None)
            elif fhi < lo or (hi is not None and flo > hi):
                return False
            else:
                self.note(f"{path}: minLength/maxLength next to format {fmt!r} are not enforced")
                core.pop("minLength", None)
                core.pop("maxLength", None)
        return core

    def array(self, s: dict[str, Any], path: str) -> Core:
        self.depth += 1
        try:
            prefix = [self.lower(p, f"{path}[{i}]") for i, p in enumerate(s.get("prefixItems", []))]
            items = self.lower(s["items"], f"{path}[]") if "items" in s else {}
        finally:
            self.depth -= 1
        core: dict[str, Any] = {"type": "array", "prefixItems": prefix, "items": items}
        if "minItems" in s:
            core["minItems"] = int(s["minItems"])
        if "maxItems" in s:
            core["maxItems"] = int(s["maxItems"])
        if s.get("uniqueItems") and core.get("maxItems", 2) > 1:
            self.note(f"{path}: keyword 'uniqueItems' is not enforced")
        return self.finish_array(core)

    def finish_array(self, core: dict[str, Any]) -> Core:
        prefix: list[Core] = core["prefixItems"]
        cut = next((i for i, p in enumerate(prefix) if p is False), None)
        limit = cut if cut is not None else len(prefix) if core["items"] is False else None
        if cut is not None:
            prefix = prefix[:cut]
        if limit is not None:
            core["maxItems"] = min(core.get("maxItems", limit), limit)
        core["prefixItems"] = prefix
        if core.get("minItems", 0) > core.get("maxItems", math.inf):
            return False
        if not prefix:
            del core["prefixItems"]
        if core["items"] == {}:
            del core["items"]
        if core.get("minItems") == 0:
            del core["minItems"]
        return core

    def object(self, s: dict[str, Any], path: str) -> Core:
        self.depth += 1
        try:
            props = {n: self.lower(p, f"{path}.{n}") for n, p in s.get("properties", {}).items()}
            extra = (
                self.lower(s["additionalProperties"], f"{path}.additionalProperties")
                if "additionalProperties" in s
                else None
            )
            patterns = {
                p: self.lower(sub, f"{path}.patternProperties[{p!r}]")
                for p, sub in s.get("patternProperties", {}).items()
            }
        finally:
            self.depth -= 1
        required = list(dict.fromkeys(s.get("required", [])))
        compiled = {}
        for pat in patterns:
            rx = _python_regex(pat)
            if rx is None:
                self.note(f"{path}: patternProperties {pat!r} is not a regular expression we can check; ignored")
            else:
                compiled[pat] = rx
        for name in required:
            if name not in props:
                # a required name without a schema of its own: its pattern's, else additionalProperties
                matched = any(rx.search(name) for rx in compiled.values())
                props[name] = {} if matched or extra is None else extra
        for pat, rx in compiled.items():
            for name in props:
                if rx.search(name):
                    props[name] = self.intersect(props[name], patterns[pat], f"{path}.{name}")
        if patterns:
            if extra is not False:
                self.note(f"{path}: patternProperties: only the declared properties are generated", False)
            extra = False
        names = s.get("propertyNames")
        if names is not None and names is not True:
            self.lower(names, f"{path}.propertyNames")  # malformed is still an error
            for name in props:
                if _validate(name, names, self.root, path):
                    props[name] = False
            if extra not in (None, False):
                self.note(f"{path}: keyword 'propertyNames' is not enforced on additional properties")
        core: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        if extra is not None:
            core["additionalProperties"] = extra
        result = self.finish_object(core)
        if result is False:
            return False
        declared = [n for n, p in props.items() if p is not False]
        closed = extra is None or extra is False
        if "minProperties" in s and len(required) < s["minProperties"]:
            self.note(f"{path}: keyword 'minProperties' is not enforced")
        if "maxProperties" in s and not (closed and len(declared) <= s["maxProperties"]):
            self.note(f"{path}: keyword 'maxProperties' is not enforced")
        return result

    def finish_object(self, core: dict[str, Any]) -> Core:
        props = core["properties"]
        if any(props.get(n) is False for n in core["required"]):
            return False
        if not core["required"]:
            del core["required"]
        if not props:
            del core["properties"]
        return core

    # --- references ----------------------------------------------------------------------------

    def ref(self, ref: str, path: str) -> Core:
        parts = _pointer(ref)
        if parts is None:
            self.note(f"{path}: $ref {ref!r} is not followed (only local '#/...' references)")
            return {}
        pointer = "/".join(parts)
        if pointer in self.pending:
            if self.depth <= self.pending[pointer]:
                # recursion with no array or object in between would be a left-recursive grammar
                self.note(f"{path}: $ref {ref!r} refers to itself with nothing in between; not enforced")
                return {}
            return {"$ref": f"#/$defs/{self.ref_names[pointer]}"}
        if pointer in self.ref_names:
            name = self.ref_names[pointer]
            return False if self.defs[name] is False else {"$ref": f"#/$defs/{name}"}
        try:
            target = _walk(self.root, parts)
        except (KeyError, IndexError, ValueError):
            self.note(f"{path}: $ref {ref!r} does not resolve; not enforced")
            return {}
        base = INVALID_RULE_CHARS.sub("-", parts[-1] if parts else "root").strip("-") or "def"
        name = f"{self.prefix}{base}"
        taken = set(self.ref_names.values())
        i = 0
        while name in taken:
            name, i = f"{self.prefix}{base}{i}", i + 1
        self.ref_names[pointer] = name
        self.pending[pointer] = self.depth
        try:
            core = self.lower(target, "#/" + "/".join(parts) if parts else "#")
        finally:
            del self.pending[pointer]
        self.defs[name] = core
        if core is False:
            return False
        return {"$ref": f"#/$defs/{name}"}

    # --- algebra -------------------------------------------------------------------------------

    def union(self, branches: Iterable[Core]) -> Core:
        flat: dict[str, Core] = {}
        for b in branches:
            if b is False:
                continue
            if b is True or b == {}:
                return {}
            assert isinstance(b, dict)
            for x in b.get("anyOf", [b]):
                flat.setdefault(_key(x), x)
        alts = list(flat.values())
        if not alts:
            return False
        return alts[0] if len(alts) == 1 else {"anyOf": alts}

    def deref(self, core: dict[str, Any]) -> Core | None:
        name = core["$ref"].removeprefix("#/$defs/")
        return self.defs.get(name)

    def intersect(self, a: Core, b: Core, path: str) -> Core:
        if a is False or b is False:
            return False
        if a is True or a == {}:
            return b
        if b is True or b == {}:
            return a
        assert isinstance(a, dict) and isinstance(b, dict)
        if "enum" in b and "enum" not in a:
            a, b = b, a
        if "enum" in a:
            kept = [v for v in a["enum"] if self.ok(v, b)]
            return {"enum": kept} if kept else False
        if "anyOf" in b and "anyOf" not in a:
            a, b = b, a
        if "anyOf" in a:
            others = b.get("anyOf", [b])
            if len(a["anyOf"]) * len(others) > _MAX_BRANCHES:
                self.note(f"{path}: allOf over large anyOf branches is not merged; only one side is enforced")
                return a
            return self.union(self.intersect(x, y, path) for x in a["anyOf"] for y in others)
        if _key(a) == _key(b):
            return a
        if "$ref" in b and "$ref" not in a:
            a, b = b, a
        if "$ref" in a:
            target = self.deref(a)
            if target is None or self.inlined > 8:
                # a definition still being lowered, or two recursive ones met (their merge is infinite)
                self.note(f"{path}: allOf with a recursive $ref is not merged; only the $ref is enforced")
                return a
            self.inlined += 1
            try:
                return self.intersect(target, b, path)
            finally:
                self.inlined -= 1
        ta, tb = a["type"], b["type"]
        if {ta, tb} == {"integer", "number"}:
            ta = tb = "integer"
        elif ta != tb:
            return False
        if ta in ("null", "boolean"):
            return {"type": ta}
        if ta in ("integer", "number"):
            lo = max([c["minimum"] for c in (a, b) if "minimum" in c], default=None)
            hi = min([c["maximum"] for c in (a, b) if "maximum" in c], default=None)
            return _bounded(ta, lo, hi)
        if ta == "string":
            out: dict[str, Any] = {"type": "string"}
            if "minLength" in a or "minLength" in b:
                out["minLength"] = max(a.get("minLength", 0), b.get("minLength", 0))
            if "maxLength" in a or "maxLength" in b:
                out["maxLength"] = min(c["maxLength"] for c in (a, b) if "maxLength" in c)
            for key in ("pattern", "format"):
                values = [c[key] for c in (a, b) if key in c]
                if values:
                    out[key] = values[0]
                if len(set(values)) > 1:
                    self.note(f"{path}: allOf of two different {key}s: only {values[0]!r} is enforced")
            return self.finish_string(out, path)
        if ta == "array":
            pa, pb = a.get("prefixItems", []), b.get("prefixItems", [])
            ia, ib = a.get("items", {}), b.get("items", {})
            prefix = [
                self.intersect(pa[i] if i < len(pa) else ia, pb[i] if i < len(pb) else ib, f"{path}[{i}]")
                for i in range(max(len(pa), len(pb)))
            ]
            out = {"type": "array", "prefixItems": prefix, "items": self.intersect(ia, ib, f"{path}[]")}
            if "minItems" in a or "minItems" in b:
                out["minItems"] = max(a.get("minItems", 0), b.get("minItems", 0))
            if "maxItems" in a or "maxItems" in b:
                out["maxItems"] = min(c["maxItems"] for c in (a, b) if "maxItems" in c)
            return self.finish_array(out)
        # objects: a property missing from one side meets that side's additionalProperties
        props_a, props_b = a.get("properties", {}), b.get("properties", {})
        extra_a, extra_b = a.get("additionalProperties"), b.get("additionalProperties")
        props: dict[str, Core] = {}
        for name in dict.fromkeys([*props_a, *props_b]):
            sa = props_a.get(name, {} if extra_a is None else extra_a)
            sb = props_b.get(name, {} if extra_b is None else extra_b)
            props[name] = self.intersect(sa, sb, f"{path}.{name}")
        out = {
            "type": "object",
            "properties": props,
            "required": list(dict.fromkeys([*a.get("required", []), *b.get("required", [])])),
        }
        if extra_a is not None and extra_b is not None:
            out["additionalProperties"] = self.intersect(extra_a, extra_b, f"{path}.additionalProperties")
        elif extra_a is not None or extra_b is not None:
            out["additionalProperties"] = extra_a if extra_a is not None else extra_b
        return self.finish_object(out)

    def kinds(self, core: Core, depth: int = 0) -> set[str]:
        """The JSON types a core admits (integer counts as number)."""
        if core is False:
            return set()
        if core is True or core == {} or depth > 8:
            return set(_ALL_KINDS)
        assert isinstance(core, dict)
        if "enum" in core:
            return {_kind_of(v) for v in core["enum"]}
        if "anyOf" in core:
            return set().union(*(self.kinds(b, depth + 1) for b in core["anyOf"]))
        if "$ref" in core:
            target = self.deref(core)
            return set(_ALL_KINDS) if target is None else self.kinds(target, depth + 1)
        return {"number" if core["type"] == "integer" else core["type"]}

    def disjoint(self, a: Core, b: Core, depth: int = 0) -> bool:
        """Whether no value is in both (``False`` when unsure: then oneOf is only anyOf)."""
        if not self.kinds(a) & self.kinds(b):
            return True
        if depth > 4 or not isinstance(a, dict) or not isinstance(b, dict):
            return False
        for x, y in ((a, b), (b, a)):
            if "enum" in x:
                return all(not self.ok(v, y) for v in x["enum"])
            if "anyOf" in x:
                return all(self.disjoint(branch, y, depth + 1) for branch in x["anyOf"])
            if "$ref" in x:
                target = self.deref(x)
                return target is not None and self.disjoint(target, y, depth + 1)
        if "type" not in a or "type" not in b:
            return False
        if a["type"] in ("integer", "number") and b["type"] in ("integer", "number"):
            return bool(
                a.get("maximum", math.inf) < b.get("minimum", -math.inf)
                or b.get("maximum", math.inf) < a.get("minimum", -math.inf)
            )
        if a["type"] == "object" and b["type"] == "object":
            shared = set(a.get("required", [])) & set(b.get("required", []))
            pa, pb = a.get("properties", {}), b.get("properties", {})
            return any(
                self.disjoint(pa.get(n, {}), pb.get(n, {}), depth + 1) for n in shared
            )  # a discriminator: {"kind": {"const": "a"}} against {"kind": {"const": "b"}}
        return False


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


INVALID_RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")


def lower_schema(schema: Any, *, prefix: str = "", require_object: bool = False) -> Lowered:
    """The core schema for ``schema``; :class:`InvalidSchema` only if it is not a JSON Schema.

    ``require_object``: the value must also be an object (tool arguments): a narrowing, so the
    grammar's output is still valid under the schema. ``prefix`` keeps definition names of
    several schemas in one grammar apart.
    """
    if not isinstance(schema, dict | bool):
        raise InvalidSchema([f"$: a JSON schema must be an object or a boolean, not {json.dumps(schema)[:60]}"])
    root = modernise(schema)
    lowerer = _Lowerer(root, prefix)
    core = lowerer.lower(root, "$")
    if require_object:
        core = lowerer.intersect(core, {"type": "object"}, "$")
    if core is False:
        lowerer.note("$: no value satisfies the schema; the grammar allows any value", True)
        core = {"type": "object"} if require_object else {}
    for name, d in lowerer.defs.items():
        if d is False:
            # only reachable through recursion (see _Lowerer.ref), which cannot be "no value"
            lowerer.defs[name] = {}
            lowerer.note(f"$defs {name}: no value satisfies this recursive schema; not enforced")
    return Lowered(core, lowerer.defs, lowerer.notes)


# --- regular expressions as grammar ---------------------------------------------------------------
#
# Upstream's pattern translation copies regex text into GBNF: a '"' or '\' in the pattern, or a '.',
# lets raw quotes, backslashes and control characters into the JSON string (json.loads fails), and
# \d, \w, lookaheads or (?:...) make llama.cpp reject the grammar or the converter assert. This one
# parses the pattern with Python's own parser and spells every character the way JSON writes it.


class _Untranslatable(Exception):
    pass


_MAX_CP = 0x10FFFF
_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20)]
# what a JSON string holds unescaped (upstream's grammar also leaves out DEL), and no surrogates
_NOT_RAW = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F), (0xD800, 0xDFFF)]


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out, at = [], 0
    for lo, hi in _merge(ranges):
        if lo > at:
            out.append((at, lo - 1))
        at = hi + 1
    if at <= _MAX_CP:
        out.append((at, _MAX_CP))
    return out


def _subtract(ranges: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    keep = _complement(minus)
    out = []
    for lo, hi in _merge(ranges):
        for klo, khi in keep:
            a, b = max(lo, klo), min(hi, khi)
            if a <= b:
                out.append((a, b))
    return out


def _contains(ranges: list[tuple[int, int]], cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def _class_char(cp: int) -> str:
    if chr(cp).isascii() and chr(cp).isalnum():
        return chr(cp)
    if cp < 0x100:
        return f"\\x{cp:02X}"
    if cp < 0x10000:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


_SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def _json_char(cp: int) -> str:
    """GBNF for the JSON text of one character inside a string."""
    if not _contains(_NOT_RAW, cp):
        return '"' + chr(cp) + '"'
    if 0xD800 <= cp <= 0xDFFF:
        raise _Untranslatable("a lone surrogate")
    text = _SHORT_ESCAPES.get(cp, f"\\u{cp:04x}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _class_rule(ranges: list[tuple[int, int]]) -> str:
    """GBNF for one character from ``ranges`` as JSON text (controls other than \\t\\n\\r are left out)."""
    raw = _subtract(ranges, _NOT_RAW)
    alts = []
    if raw:
        alts.append(
            "[" + "".join(_class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}" for a, b in raw) + "]"
        )
    for cp in (0x22, 0x5C, 0x09, 0x0A, 0x0D):
        if _contains(ranges, cp):
            alts.append(_json_char(cp))
    if not alts:
        raise _Untranslatable("a character class with no character a JSON string can hold")
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def _class_ranges(items: list[tuple[Any, Any]]) -> list[tuple[int, int]]:
    negate = False
    ranges: list[tuple[int, int]] = []
    categories = {
        _sre.CATEGORY_DIGIT: _DIGIT,
        _sre.CATEGORY_WORD: _WORD,
        _sre.CATEGORY_SPACE: _SPACE,
        _sre.CATEGORY_NOT_DIGIT: _complement(_DIGIT),
        _sre.CATEGORY_NOT_WORD: _complement(_WORD),
        _sre.CATEGORY_NOT_SPACE: _complement(_SPACE),
    }
    for op, av in items:
        if op is _sre.NEGATE:
            negate = True
        elif op is _sre.LITERAL:
            ranges.append((av, av))
        elif op is _sre.RANGE:
            ranges.append(av)
        elif op is _sre.CATEGORY and av in categories:
            ranges += categories[av]
        else:
            raise _Untranslatable(f"{op} in a character class")
    return _complement(ranges) if negate else _merge(ranges)


def _rep(item: str, lo: int, hi: int | None, separator_rule: str | None = None) -> str:
    """Upstream's bounded repetition (nested optionals, the form the rule-shape tests expect)."""
    return str(_build_repetition(item, lo, hi, separator_rule=separator_rule))  # type: ignore[no-untyped-call]


def _repeat(item: str, lo: int, hi: int | None) -> str:
    if hi == 0:
        return ""
    if hi is None:
        return f"{item}*" if lo == 0 else f"{item}+" if lo == 1 else f"{item}{{{lo},}}"
    if (lo, hi) == (0, 1):
        return f"{item}?"
    return f"{item}{{{lo}}}" if lo == hi else f"{item}{{{lo},{hi}}}"


def _sequence(items: Any, cap: int | None) -> str:
    parts: list[str] = []
    for op, av in items:
        if op is _sre.LITERAL:
            parts.append(_json_char(av))
        elif op is _sre.NOT_LITERAL:
            parts.append(_class_rule(_complement([(av, av)])))
        elif op is _sre.ANY:
            parts.append(_class_rule(_complement([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)])))
        elif op is _sre.IN:
            parts.append(_class_rule(_class_ranges(av)))
        elif op is _sre.BRANCH:
            alts = [_sequence(alt, cap) for alt in av[1]]
            body = " | ".join(a for a in alts if a)
            if body:
                parts.append(f"({body})" + ("?" if not all(alts) else ""))
        elif op is _sre.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise _Untranslatable("inline flags")
            body = _sequence(sub, cap)
            if body:
                parts.append(f"({body})")
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            lo, hi, sub = av
            body = _sequence(sub, cap)
            unbounded = hi is _sre.MAXREPEAT
            if body:
                rep = _repeat(
                    f"({body})", lo, None if unbounded and cap is None else max(lo, cap or 0) if unbounded else hi
                )
                if rep:
                    parts.append(rep)
        elif op is _sre.AT:
            raise _Untranslatable("an anchor or boundary other than ^...$ around the whole pattern")
        else:
            raise _Untranslatable(f"{str(op).lower()} is not supported")
    return " ".join(parts)


@lru_cache(maxsize=512)
def _parse(pattern: str) -> Any:
    try:
        parsed = _sre_parse.parse(pattern, re.ASCII)
    except (re.error, RecursionError, OverflowError) as exc:
        raise _Untranslatable(f"not a regular expression Python reads: {exc}") from None
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL):
        raise _Untranslatable("inline flags")
    return parsed


@lru_cache(maxsize=512)
def regex_rule(pattern: str, cap: int | None = None) -> str:
    """GBNF for the JSON text of the strings that ``pattern`` finds a match in (``re.search``).

    Unanchored ends get any characters around the match (``cap`` bounds unbounded repetitions).
    Raises :class:`_Untranslatable` for what a grammar cannot say (lookarounds, backreferences,
    inline flags, anchors inside the pattern).
    """
    items = list(_parse(pattern))
    starts = bool(items) and items[0] in ((_sre.AT, _sre.AT_BEGINNING), (_sre.AT, _sre.AT_BEGINNING_STRING))
    if starts:
        items = items[1:]
    ends = bool(items) and items[-1] in ((_sre.AT, _sre.AT_END), (_sre.AT, _sre.AT_END_STRING))
    if ends:
        items = items[:-1]
    body = _sequence(items, cap)
    anything = _repeat(_class_rule(_complement([(0x0A, 0x0A), (0x0D, 0x0D)])), 0, cap)
    parts = [p for p in ([] if starts else [anything]) + [body] + ([] if ends else [anything]) if p]
    return " ".join(parts) if parts else '""'


@lru_cache(maxsize=512)
def _python_regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern, re.ASCII)
    except (re.error, RecursionError, OverflowError):
        return None


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
    """Core schemas (see :func:`lower_schema`) to GBNF, in llama-cpp-python's rule names.

    ``max_string``/``max_items`` cap strings without ``maxLength`` and arrays without
    ``maxItems`` (and the members of open objects): a narrower language, never a wider one.
    """

    def __init__(
        self, prop_order: list[str] | None = None, max_string: int | None = None, max_items: int | None = None
    ) -> None:
        order = {name: i for i, name in enumerate(prop_order or [])}
        super().__init__(prop_order=order, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]
        self.max_string = max_string
        self.max_items = max_items
        self.defs: dict[str, Core] = {}
        self._def_rules: dict[str, str] = {}
        self._any: str | None = None

    def add_defs(self, defs: dict[str, Core]) -> None:
        self.defs.update(defs)

    def _format_literal(self, literal: str) -> str:
        # upstream leaves backslashes alone, so a const or property name with '\' or '"' in it
        # (json.dumps writes '\"') ends the GBNF literal early: llama.cpp rejects the grammar
        escaped = literal.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{escaped}"'

    def _fresh(self, base: str) -> str:
        """A rule name nobody has, held with a placeholder until the caller sets it."""
        name, i = base, 0
        while name in self._rules or name in RESERVED_NAMES:
            name, i = f"{base}{i}", i + 1
        self._rules[name] = '""'
        return name

    def add_rule(self, name: str, rule: str) -> str:
        return str(self._add_rule(name, rule))  # type: ignore[no-untyped-call]

    def _primitive(self, kind: str, rule_name: str) -> str:
        name = str(self._add_primitive(kind, PRIMITIVE_RULES[kind]))
        return self.add_rule("root", name) if rule_name == "root" else name

    def _string_body(self, lo: int, hi: int | None) -> str:
        char = str(self._add_primitive("char", PRIMITIVE_RULES["char"]))
        return r'"\"" ' + _rep(char, lo, hi) + r' "\"" space'

    def any_value(self) -> str:
        """Any JSON value; with caps, strings, arrays and objects are capped at every depth."""
        if self._any is not None:
            return self._any
        if self.max_string is None and self.max_items is None:
            self._any = str(self._add_primitive("value", PRIMITIVE_RULES["value"]))
            return self._any
        value, array, obj, text = (self._fresh(n) for n in ("any-value", "any-array", "any-object", "any-string"))
        self._any = value
        number = str(self._add_primitive("number", PRIMITIVE_RULES["number"]))
        boolean = str(self._add_primitive("boolean", PRIMITIVE_RULES["boolean"]))
        null = str(self._add_primitive("null", PRIMITIVE_RULES["null"]))
        self._rules[text] = self._string_body(0, self.max_string)
        self._rules[array] = '"[" space ' + _rep(value, 0, self.max_items, separator_rule='"," space') + ' "]" space'
        member = f'{text} ":" space {value}'
        self._rules[obj] = (
            '"{" space ' + _rep(f"({member})", 0, self.max_items, separator_rule='"," space') + ' "}" space'
        )
        self._rules[value] = f"{obj} | {array} | {text} | {number} | {boolean} | {null}"
        return value

    def _def_rule(self, ref: str) -> str:
        key = ref.removeprefix("#/$defs/")
        if key not in self._def_rules:
            name = self._fresh(INVALID_RULE_CHARS.sub("-", key) or "def")
            self._def_rules[key] = name
            target = self.defs.get(key, {})
            self._rules[name] = self.visit(target if isinstance(target, dict) else {}, f"{name}-body")
        return self._def_rules[key]

    def visit(self, schema: dict[str, Any], name: str) -> str:
        """The rule for a core schema (``False`` is never visited: lowering removes it)."""
        rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
        core: Core = schema
        if core is False or core is True:
            raise ValueError("boolean schema in the core")
        if not core:
            return self.add_rule(rule_name, self.any_value())
        if "$ref" in core:
            return self.add_rule(rule_name, self._def_rule(core["$ref"]))
        if "anyOf" in core:
            alts = [self.visit(b, f"{name}{'-' if name else 'alternative-'}{i}") for i, b in enumerate(core["anyOf"])]
            return self.add_rule(rule_name, " | ".join(alts))
        if "enum" in core:
            return self.add_rule(rule_name, " | ".join(self._format_literal(json.dumps(v)) for v in core["enum"]))
        kind = core["type"]
        if kind in ("null", "boolean"):
            return self._primitive(kind, rule_name)
        if kind in ("integer", "number"):
            lo, hi = core.get("minimum"), core.get("maximum")
            if lo is None and hi is None:
                return self._primitive(kind, rule_name)
            body = (integer_range_rule if kind == "integer" else number_range_rule)(lo, hi)
            return self.add_rule(rule_name, f"({body}) space")
        if kind == "string":
            return self._string(core, rule_name)
        if kind == "array":
            return self._array(core, name, rule_name)
        return self.add_rule(rule_name, self._object(core, name))

    def _string(self, core: dict[str, Any], rule_name: str) -> str:
        if "pattern" in core:
            body = regex_rule(core["pattern"], self.max_string)
            return self.add_rule(rule_name, r'"\"" ' + body + r' "\"" space')
        fmt = core.get("format")
        if fmt is not None and fmt.startswith("uuid"):
            return self._primitive("uuid", rule_name)
        if fmt is not None:
            prim = f"{fmt}-string"
            return self.add_rule(rule_name, str(self._add_primitive(prim, STRING_FORMAT_RULES[prim])))
        lo, hi = core.get("minLength", 0), core.get("maxLength")
        if hi is None and self.max_string is not None:
            hi = max(self.max_string, lo)
        if lo == 0 and hi is None:
            return self._primitive("string", rule_name)
        return self.add_rule(rule_name, self._string_body(lo, hi))

    def _array(self, core: dict[str, Any], name: str, rule_name: str) -> str:
        # upstream reads prefixItems as "exactly these items" and drops items, minItems and maxItems
        prefix: list[Core] = core.get("prefixItems", [])
        tail: Core = core.get("items", {})
        lo, hi = core.get("minItems", 0), core.get("maxItems")
        if hi is None and self.max_items is not None:
            hi = max(self.max_items, lo)
        sep = '"," space'
        if hi == 0 or (not prefix and tail is False):
            return self.add_rule(rule_name, '"[" space "]" space')
        if not prefix:
            item = self.visit(tail, f"{name}{'-' if name else ''}item")  # type: ignore[arg-type]
            return self.add_rule(rule_name, '"[" space ' + _rep(item, lo, hi, separator_rule=sep) + ' "]" space')
        count = len(prefix) if hi is None else min(len(prefix), hi)
        rules = [self.visit(p, f"{name}{'-' if name else ''}tuple-{i}") for i, p in enumerate(prefix[:count])]  # type: ignore[arg-type]
        more = tail is not False and (hi is None or hi > len(prefix))
        tail_rule = self.visit(tail, f"{name}{'-' if name else ''}item") if more else None  # type: ignore[arg-type]

        def after(i: int) -> str:
            """Items from position ``i`` on (each after a comma when ``i > 0``)."""
            lead = f"{sep} " if i > 0 else ""
            if i < count:
                body = f"{lead}{rules[i]} {after(i + 1)}".strip()
                return body if i < lo else f"({body})?"
            if tail_rule is None:
                return ""
            need, up_to = max(lo - i, 0), None if hi is None else hi - i
            if i == 0:
                return _rep(tail_rule, need, up_to, separator_rule=sep)
            return _rep(f"({sep} {tail_rule})", need, up_to)

        return self.add_rule(rule_name, f'"[" space {after(0)} "]" space'.replace("  ", " "))

    def _key_rule(self, name: str, excluded: list[str]) -> str:
        """A property name (capped like strings), never one of ``excluded``: extra members must not
        repeat a declared name with a value of the wrong schema (upstream's keys can)."""
        if not excluded:
            if self.max_string is None:
                return str(self._add_primitive("string", PRIMITIVE_RULES["string"]))
            return self.add_rule(f"{name}-key", self._string_body(0, self.max_string))
        plain = r'[^"\\\x7F\x00-\x1F]'
        tail = _repeat(plain, 0, self.max_string)
        trie: dict[str, Any] = {}
        for word in excluded:
            if all(not _contains(_NOT_RAW, ord(c)) for c in word):
                node = trie
                for c in word:
                    node = node.setdefault(c, {})
                node["\0end"] = {}

        def avoid(node: dict[str, Any]) -> str:
            kids = [c for c in node if c != "\0end"]
            other = "[^" + "".join(_class_char(ord(c)) for c in kids) + r'"\\\x7F\x00-\x1F]'
            alts = [f"{other} {tail}".strip()] + [f"{self._format_literal(c)} {avoid(node[c])}" for c in kids]
            group = "(" + " | ".join(alts) + ")"
            return group if "\0end" in node else group + "?"

        return self.add_rule(f"{name}-key", r'"\"" ' + avoid(trie) + r' "\"" space')

    def _object(self, core: dict[str, Any], name: str) -> str:
        props: dict[str, Core] = core.get("properties", {})
        required = set(core.get("required", []))
        order = self._prop_order
        live = [(n, p) for n, p in props.items() if p is not False]
        sorted_props = [
            kv[0] for _, kv in sorted(enumerate(live), key=lambda ikv: (order.get(ikv[1][0], len(order)), ikv[0]))
        ]
        kv_rules: dict[str, str] = {}
        for prop_name, prop_schema in live:
            # upstream names a property "" at the root "root" and so overwrites the root rule
            child = f"{name}{'-' if name else ''}{prop_name}" or "empty-name"
            prop_rule = self.visit(prop_schema, child)  # type: ignore[arg-type]
            kv_rules[prop_name] = self.add_rule(
                f"{child}-kv", f'{self._format_literal(json.dumps(prop_name))} space ":" space {prop_rule}'
            )
        required_props = [k for k in sorted_props if k in required]
        optional_props = [k for k in sorted_props if k not in required]
        extra = core.get("additionalProperties")
        sub = f"{name}{'-' if name else ''}additional"
        if extra is not None and extra is not False:
            value_rule = self.visit(extra, f"{sub}-value")
            key = self._key_rule(sub, list(props))
            kv_rules["*"] = self.add_rule(f"{sub}-kv", f'{key} ":" space {value_rule}')
            optional_props.append("*")

        rule = '"{" space ' + ' "," space '.join(kv_rules[k] for k in required_props)
        if optional_props:
            rule += " ("
            if required_props:
                rule += ' "," space ( '

            def rest(ks: list[str], first_is_optional: bool) -> str:
                k, *others = ks
                kv = kv_rules[k]
                if k == "*":
                    more = None if self.max_items is None else max(self.max_items - 1, 0)
                    res = self.add_rule(f"{sub}-kvs", f"{kv} " + _repeat(f'( "," space {kv} )', 0, more))
                    if first_is_optional:
                        # upstream leaves out this comma and makes the extras mandatory after a property
                        res = f'( "," space {res} )?'
                elif first_is_optional:
                    res = f'( "," space {kv} )?'
                else:
                    res = kv
                if others:
                    res += " " + self.add_rule(f"{name}{'-' if name else ''}{k}-rest", rest(others, True))
                return res

            rule += " | ".join(rest(optional_props[i:], False) for i in range(len(optional_props)))
            if required_props:
                rule += " )"
            rule += " )?"
        return rule + ' "}" space'

    def grammar(self) -> str:
        if "char" in self._rules:
            self._rules["char"] = _JSON_CHAR
        if "number" in self._rules:
            self._rules["number"] = _NUMBER
        return str(self.format_grammar())  # type: ignore[no-untyped-call]


# --- the API ---------------------------------------------------------------------------------------


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


# --- validation ------------------------------------------------------------------------------


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
