"""Sizes and durations as models.yaml writes them: ``"256MB"``, ``"5m"``, ``never``."""

from __future__ import annotations

import math
import re
from typing import Any

from zoe_edge import validation

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")  # as openapi.yaml's keep_alive
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes from ``268435456``, ``"256MB"``, ``"1GiB"``; ``0`` means none."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a size such as '256MB' or 0, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a size >= 0, got {value!r}")
        return int(value)
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"expected a size such as '256MB', '1GiB' or 0, got {value!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: Any) -> float | None:
    """Seconds from ``300``, ``"300s"``, ``"5m"``, ``"1h"``; ``None``/``-1``/``"never"`` mean forever."""
    if value is None or (isinstance(value, str) and value.strip() == "never"):
        return None
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, '5m' or 'never'")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, got {validation.shown(value)}")
        if value < 0:
            return None
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
        if value.strip() == "-1":
            return None
    raise ValueError(f"expected a duration such as 300, '5m' or 'never', got {validation.shown(value)}")
