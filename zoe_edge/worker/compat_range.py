"""Which llama-cpp-python releases zoe-edge supports, and what a check found; pure, imports nothing of it.

Kept apart from :mod:`zoe_edge.worker.llama_compat` (which re-exports all of it) so that module stays
about the calls themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DISTRIBUTION = "llama-cpp-python"
# the releases whose API this module was written against; REQUIRED below is what actually matters
SUPPORTED = ">=0.3.8,<0.4"
_LOWEST = (0, 3, 8)
_BELOW = (0, 4)


@dataclass(frozen=True)
class Compatibility:
    """What :func:`check` found: the installed release and what of zoe-edge's needs it lacks."""

    version: str | None  # None: not installed
    in_range: bool
    missing: tuple[str, ...]  # "module.attribute", or a module that did not import
    import_error: str | None = None
    supported: str = SUPPORTED

    @property
    def ok(self) -> bool:
        return self.version is not None and self.in_range and not self.missing and self.import_error is None

    @property
    def message(self) -> str:
        """One line for a log or a terminal."""
        if self.version is None:
            how = f"does not import ({self.import_error})" if self.import_error else "is not installed"
            return f"{DISTRIBUTION} {how}; zoe-edge needs {self.supported}"
        if self.ok:
            return f"{DISTRIBUTION} {self.version} is supported ({self.supported})"
        why = []
        if not self.in_range:
            why.append("outside the supported range")
        if self.import_error is not None:
            why.append(f"import failed: {self.import_error}")
        if self.missing:
            why.append("missing " + ", ".join(self.missing))
        return f"{DISTRIBUTION} {self.version} is not supported (zoe-edge needs {self.supported}): {'; '.join(why)}"


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string ("0.3.8.post1" -> (0, 3, 8))."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def in_supported_range(version: str) -> bool:
    parsed = version_tuple(version)
    return bool(parsed) and _LOWEST <= parsed < _BELOW
