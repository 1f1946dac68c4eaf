"""Any JSON Schema (draft 2020-12, plus the common draft-7 spellings) to a *core* schema.

The core is what the grammar can enforce exactly: one type per branch, ``anyOf``, ``enum``, local
``$ref``, and the keywords of each type. ``allOf`` is merged, ``oneOf`` becomes ``anyOf``, a
schema without ``type`` is every type its keywords allow (``{}``: any JSON value). What the core
cannot say *degrades*: it is left out (the grammar is looser than the schema, and ``exact`` is
false) or narrowed to a subset that is still schema-valid. Each degradation is named with its
path; none is an error. Only something that is not a JSON Schema at all raises
:class:`InvalidSchema`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from zoe_edge.worker.grammar.algebra import CoreAlgebra, _bounded
from zoe_edge.worker.grammar.errors import Core, InvalidSchema
from zoe_edge.worker.grammar.patterns import _python_regex
from zoe_edge.worker.grammar.ranges import integer_bounds
from zoe_edge.worker.grammar.schema import (
    _ALL_KINDS,
    _COUNTS,
    _IGNORED,
    _TYPE_KEYWORDS,
    INVALID_RULE_CHARS,
    _check_shape,
    _integral,
    _pointer,
    _walk,
    modernise,
)
from zoe_edge.worker.grammar.validation import _validate


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


class _Lowerer(CoreAlgebra):
    def __init__(self, root: Any, prefix: str) -> None:
        super().__init__()
        self.root = root
        self.prefix = prefix
        self.ref_names: dict[str, str] = {}
        self.pending: dict[str, int] = {}  # pointer -> container depth when its lowering began
        self.depth = 0  # how many arrays/objects we are inside

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
        names_core: Core = {}
        if names is not None and names is not True:
            names_core = self.lower(names, f"{path}.propertyNames")  # malformed is still an error
            notes = list(self.notes)
            names_core = self.intersect(names_core, {"type": "string"}, path)  # a name is a string
            self.notes = notes  # only a smaller schema to check names against: nothing is lost
            for name in props:
                if _validate(name, names, self.root, path):
                    props[name] = False
            if extra not in (None, False):
                self.note(f"{path}: keyword 'propertyNames' is not enforced on additional properties")
        core: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        if names_core != {} and extra is None:
            # the grammar generates only the declared names (all checked above), but an allOf
            # sibling may declare more: the intersection checks them against it (CoreAlgebra.intersect)
            core["propertyNames"] = names_core
        if extra is not None:
            core["additionalProperties"] = extra
        result = self.finish_object(core)
        if result is False:
            return False
        declared = [n for n, p in props.items() if p is not False]
        closed = extra is None or extra is False
        if "minProperties" in s and len(required) < s["minProperties"]:
            self.note(f"{path}: keyword 'minProperties' is not enforced")
        if "maxProperties" in s:
            if not (closed and len(declared) <= s["maxProperties"]):
                self.note(f"{path}: keyword 'maxProperties' is not enforced")
            elif extra is None and isinstance(result, dict):
                # held by generating the declared names only, which an allOf sibling may add to:
                # the intersection counts them again (CoreAlgebra.intersect_objects)
                result["maxProperties"] = s["maxProperties"]
        return result

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
