"""A random sampler for GBNF grammars: what a grammar can produce, without a model.

Parses the GBNF our converter emits (one ``name ::= body`` per line: literals, character classes,
rule references, groups, ``|``, and the repetitions ``* + ? {m} {m,} {m,n}``) and takes random
walks through it. Each walk has a budget: while it lasts, choices are random; once spent, every
choice is the cheapest way to finish (least characters, computed as a fixpoint over the rules),
so a walk always ends unless the grammar has no finite output at all.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# ("lit", text) | ("cls", negated, ranges) | ("ref", name) | ("seq", nodes) | ("alt", nodes) | ("rep", node, lo, hi)
Node = tuple  # type: ignore[type-arg]

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "^": "^"}
# characters tried first for a negated class: every kind a JSON string can hold raw
_POOL = [chr(c) for c in range(0x20, 0x7F)] + ["é", "ß", "€", "中", "\u2028", "😀", "\u00a0", "Ω"]


class GrammarError(ValueError):
    pass


@dataclass
class Grammar:
    rules: dict[str, Node]

    @classmethod
    def parse(cls, text: str) -> Grammar:
        rules: dict[str, Node] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            name, sep, body = line.partition(" ::= ")
            if not sep:
                raise GrammarError(f"not a rule: {line!r}")
            parser = _Parser(body)
            rules[name.strip()] = parser.alternatives()
            parser.skip()
            if parser.i != len(body):
                raise GrammarError(f"trailing text in {name}: {body[parser.i :]!r}")
        for node in rules.values():
            _check_refs(node, rules)
        return cls(rules)


def _check_refs(node: Node, rules: dict[str, Node]) -> None:
    kind = node[0]
    if kind == "ref" and node[1] not in rules:
        raise GrammarError(f"undefined rule {node[1]!r}")
    if kind in ("seq", "alt"):
        for child in node[1]:
            _check_refs(child, rules)
    if kind == "rep":
        _check_refs(node[1], rules)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def skip(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def peek(self) -> str:
        self.skip()
        return self.s[self.i] if self.i < len(self.s) else ""

    def alternatives(self) -> Node:
        alts = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            alts.append(self.sequence())
        return alts[0] if len(alts) == 1 else ("alt", alts)

    def sequence(self) -> Node:
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.postfix())
        return items[0] if len(items) == 1 else ("seq", items)

    def postfix(self) -> Node:
        node = self.atom()
        while True:
            c = self.s[self.i] if self.i < len(self.s) else ""  # no blank between an item and its operator
            if c == "*":
                node, self.i = ("rep", node, 0, None), self.i + 1
            elif c == "+":
                node, self.i = ("rep", node, 1, None), self.i + 1
            elif c == "?":
                node, self.i = ("rep", node, 0, 1), self.i + 1
            elif c == "{":
                end = self.s.index("}", self.i)
                lo_text, comma, hi_text = self.s[self.i + 1 : end].partition(",")
                lo = int(lo_text)
                hi = lo if not comma else (int(hi_text) if hi_text.strip() else None)
                node, self.i = ("rep", node, lo, hi), end + 1
            else:
                return node

    def char(self) -> str:
        c = self.s[self.i]
        if c != "\\":
            self.i += 1
            return c
        e = self.s[self.i + 1]
        for prefix, width in (("x", 2), ("u", 4), ("U", 8)):
            if e == prefix:
                code = int(self.s[self.i + 2 : self.i + 2 + width], 16)
                self.i += 2 + width
                return chr(code)
        if e not in _ESCAPES:
            raise GrammarError(f"unknown escape \\{e}")
        self.i += 2
        return _ESCAPES[e]

    def atom(self) -> Node:
        c = self.peek()
        if c == '"':
            self.i += 1
            text = []
            while self.s[self.i] != '"':
                text.append(self.char())
            self.i += 1
            return ("lit", "".join(text))
        if c == "[":
            self.i += 1
            negated = self.s[self.i] == "^"
            if negated:
                self.i += 1
            ranges = []
            while self.s[self.i] != "]":
                lo = self.char()
                hi = lo
                if self.s[self.i] == "-" and self.s[self.i + 1] != "]":
                    self.i += 1
                    hi = self.char()
                ranges.append((ord(lo), ord(hi)))
            self.i += 1
            return ("cls", negated, ranges)
        if c == "(":
            self.i += 1
            node = self.alternatives()
            if self.peek() != ")":
                raise GrammarError(f"unbalanced group at {self.i}")
            self.i += 1
            return node
        if c == ".":
            self.i += 1
            return ("cls", True, [])
        start = self.i
        while self.i < len(self.s) and (self.s[self.i].isalnum() or self.s[self.i] in "-_"):
            self.i += 1
        if start == self.i:
            raise GrammarError(f"unexpected {c!r} at {self.i} in {self.s!r}")
        return ("ref", self.s[start : self.i])


class Sampler:
    """Random outputs of ``grammar`` from its ``root`` rule."""

    def __init__(self, grammar: Grammar, rng: random.Random, budget: int = 400) -> None:
        self.g = grammar
        self.rng = rng
        self.budget = budget
        self._memo: dict[int, float] = {}
        self.cost: dict[str, float] = {}
        self.cost = self._costs()

    def _node_cost(self, node: Node, costs: dict[str, float]) -> float:
        if costs is self.cost:  # final costs: each node's is computed once
            key = id(node)
            if key not in self._memo:
                self._memo[key] = self._node_cost_of(node, costs)
            return self._memo[key]
        return self._node_cost_of(node, costs)

    def _node_cost_of(self, node: Node, costs: dict[str, float]) -> float:
        kind = node[0]
        if kind == "lit":
            return len(node[1])
        if kind == "cls":
            return 1
        if kind == "ref":
            return 1 + costs[node[1]]
        if kind == "seq":
            return sum(self._node_cost(n, costs) for n in node[1])
        if kind == "alt":
            return min(self._node_cost(n, costs) for n in node[1])
        return node[2] * self._node_cost(node[1], costs) if node[2] else 0

    def _costs(self) -> dict[str, float]:
        costs = {name: math.inf for name in self.g.rules}
        changed = True
        while changed:
            changed = False
            for name, body in self.g.rules.items():
                c = self._node_cost(body, costs)
                if c < costs[name]:
                    costs[name], changed = c, True
        return costs

    def sample(self, root: str = "root") -> str:
        if math.isinf(self.cost[root]):
            raise GrammarError("the grammar has no finite output")
        self.out: list[str] = []
        self.spent = 0
        self._gen(("ref", root), 0)
        return "".join(self.out)

    def _tight(self, depth: int) -> bool:
        return self.spent >= self.budget or depth > 60

    def _gen(self, node: Node, depth: int) -> None:
        kind = node[0]
        if kind == "lit":
            self.out.append(node[1])
            self.spent += len(node[1])
        elif kind == "cls":
            self.out.append(self._char(node[1], node[2]))
            self.spent += 1
        elif kind == "ref":
            self._gen(self.g.rules[node[1]], depth + 1)
        elif kind == "seq":
            for child in node[1]:
                self._gen(child, depth)
        elif kind == "alt":
            finite = [n for n in node[1] if not math.isinf(self._node_cost(n, self.cost))]
            if self._tight(depth):
                choice = min(finite, key=lambda n: self._node_cost(n, self.cost))
            else:
                choice = self.rng.choice(finite)
            self._gen(choice, depth + 1)
        else:
            _, child, lo, hi = node
            count = lo
            if not self._tight(depth) and not math.isinf(self._node_cost(child, self.cost)):
                while (hi is None or count < hi) and self.rng.random() < 0.6:
                    count += 1
            for i in range(count):
                if i >= lo and self._tight(depth):
                    break
                self._gen(child, depth + 1)

    def _char(self, negated: bool, ranges: list[tuple[int, int]]) -> str:
        def inside(c: str) -> bool:
            return any(lo <= ord(c) <= hi for lo, hi in ranges)

        if not negated:
            lo, hi = self.rng.choice(ranges)
            ascii_hi = min(hi, 0x7E)
            if lo <= ascii_hi and self.rng.random() < 0.8:
                return chr(self.rng.randint(lo, ascii_hi))
            return chr(self.rng.randint(lo, hi))
        allowed = [c for c in _POOL if not inside(c)]
        if allowed:
            return self.rng.choice(allowed)
        for _ in range(1000):
            c = chr(self.rng.randint(0x20, 0x10FFFF))
            if not inside(c) and not 0xD800 <= ord(c) <= 0xDFFF:
                return c
        raise GrammarError("no character fits a negated class")


def samples(gbnf: str, rng: random.Random, n: int, budget: int = 400) -> list[str]:
    sampler = Sampler(Grammar.parse(gbnf), rng, budget)
    return [sampler.sample() for _ in range(n)]
