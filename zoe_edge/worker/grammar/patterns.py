"""Regular expressions (``pattern``) as GBNF for the JSON text of the strings they match."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_constants as _sre
    import sre_parse as _sre_parse

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
