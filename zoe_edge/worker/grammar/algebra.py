"""The algebra of core schemas: union, intersection, disjointness, and the normal form of each type.

A core schema has one type per branch, ``anyOf``, ``enum``, local ``$ref`` and the keywords of
each type; :mod:`.lowering` builds them, and ``allOf`` is computed here as an intersection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from zoe_edge.worker.grammar.errors import Core
from zoe_edge.worker.grammar.patterns import _Untranslatable, regex_rule
from zoe_edge.worker.grammar.schema import _ALL_KINDS, _FORMAT_LENGTHS, _key
from zoe_edge.worker.grammar.validation import _validate

# at most this many branches from distributing allOf over anyOf before we give up on merging
_MAX_BRANCHES = 64


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


class CoreAlgebra:
    """Operations on core schemas that record what they cannot express exactly in ``notes``."""

    def __init__(self) -> None:
        self.defs: dict[str, Core] = {}
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

    def finish_object(self, core: dict[str, Any]) -> Core:
        props = core["properties"]
        if any(props.get(n) is False for n in core["required"]):
            return False
        if not core["required"]:
            del core["required"]
        if not props:
            del core["properties"]
        return core

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
        return self.intersect_objects(a, b, path)

    def _member(self, side: dict[str, Any], name: str) -> Core:
        """The schema ``side`` gives a property ``name``: its own, else its propertyNames and
        additionalProperties (absent: any value)."""
        props: dict[str, Core] = side.get("properties", {})
        if name in props:
            return props[name]
        if "propertyNames" in side and not self.ok(name, side["propertyNames"]):
            return False
        extra: Core | None = side.get("additionalProperties")
        return {} if extra is None else extra

    def intersect_objects(self, a: dict[str, Any], b: dict[str, Any], path: str) -> Core:
        # a property missing from one side meets that side's propertyNames and additionalProperties
        props: dict[str, Core] = {}
        for name in dict.fromkeys([*a.get("properties", {}), *b.get("properties", {})]):
            props[name] = self.intersect(self._member(a, name), self._member(b, name), f"{path}.{name}")
        out: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "required": list(dict.fromkeys([*a.get("required", []), *b.get("required", [])])),
        }
        extra_a, extra_b = a.get("additionalProperties"), b.get("additionalProperties")
        if extra_a is not None and extra_b is not None:
            out["additionalProperties"] = self.intersect(extra_a, extra_b, f"{path}.additionalProperties")
        elif extra_a is not None or extra_b is not None:
            out["additionalProperties"] = extra_a if extra_a is not None else extra_b
        names = [c["propertyNames"] for c in (a, b) if "propertyNames" in c]
        if names:
            merged = names[0] if len(names) == 1 else self.intersect(names[0], names[1], f"{path}.propertyNames")
            if out.get("additionalProperties") is None:
                out["propertyNames"] = merged
            elif out["additionalProperties"] is not False:
                # the grammar's extra members take any name that is not declared
                self.note(f"{path}: keyword 'propertyNames' is not enforced on additional properties")
        limits = [c["maxProperties"] for c in (a, b) if "maxProperties" in c]
        if limits:
            live = [n for n, p in props.items() if p is not False]
            if out.get("additionalProperties") is None and len(live) <= min(limits):
                out["maxProperties"] = min(limits)
            else:
                self.note(f"{path}: keyword 'maxProperties' is not enforced")
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
