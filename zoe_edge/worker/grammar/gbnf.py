"""Core schemas to GBNF: llama-cpp-python's converter with integer/number ranges and upstream's bugs fixed."""

from __future__ import annotations

import json
from typing import Any

from zoe_edge.worker.grammar.errors import Core
from zoe_edge.worker.grammar.patterns import _NOT_RAW, _class_char, _contains, _repeat, regex_rule
from zoe_edge.worker.grammar.ranges import integer_range_rule, number_range_rule
from zoe_edge.worker.grammar.schema import INVALID_RULE_CHARS
from zoe_edge.worker.llama_compat import (
    PRIMITIVE_RULES,
    RESERVED_NAMES,
    STRING_FORMAT_RULES,
    SchemaConverter,
    build_repetition,
)

# a JSON string character: upstream lets raw control characters in (json.loads fails on them) and
# allows lone UTF-16 surrogate escapes, which break minLength (a pair is two chars but one code point)
_JSON_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))'
)
# upstream's exponent takes up to 16 digits, and json.loads turns 1e999999 into inf
_NUMBER = '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? [0-9] [0-9]?)? space'


def _rep(item: str, lo: int, hi: int | None, separator_rule: str | None = None) -> str:
    """Upstream's bounded repetition (nested optionals, the form the rule-shape tests expect)."""
    return str(build_repetition(item, lo, hi, separator_rule=separator_rule))  # type: ignore[no-untyped-call]


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
