"""Integer and number ranges (``minimum`` and friends) as GBNF alternatives."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from zoe_edge.worker.grammar.errors import UnsupportedSchema

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
