"""The configuration in force: the registry and key table read from ``models.yaml``, replaceable at run time.

One object holds them so a reload swaps them in one place; request handlers read them from here
on every request and so see a reload at once, while a request already routed keeps the registry
it was planned with.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoe_edge.access.keys import KeyTable
from zoe_edge.registry import Registry


def digest_of(text: bytes) -> str:
    return "sha256:" + hashlib.sha256(text).hexdigest()


@dataclass
class LiveConfig:
    registry: Registry
    keys: KeyTable
    source: Path
    digest: str = ""
    loaded_at: float = field(default_factory=time.time)
    reloads: int = 0
    last_error: str | None = None  # why the last reload was refused, until one succeeds

    def status(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "digest": self.digest,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "last_reload_error": self.last_error,
        }
