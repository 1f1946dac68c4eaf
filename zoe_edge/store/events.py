"""What a pull reports while it runs: one event type that a progress bar and Ollama's NDJSON both render."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoe_edge.supervisor.planner import Plan

# Ollama's /api/pull statuses, in order; "pulling <first 12 digest digits>" carries total/completed
PULLING_MANIFEST = "pulling manifest"
VERIFYING = "verifying sha256 digest"
WRITING_MANIFEST = "writing manifest"
SUCCESS = "success"


def pulling(sha256: str) -> str:
    return f"pulling {sha256[:12]}"


@dataclass(frozen=True)
class PullResult:
    """The verified file and what it took to get it.

    ``downloaded``: bytes transferred by this pull (0 when the file was already there);
    ``resumed_from``: the byte a resumed transfer started at; ``plan``: the memory plan for the
    board (``None`` when it could not be made, ``fit`` then says why).
    """

    path: Path
    size: int
    sha256: str
    downloaded: int = 0
    resumed_from: int = 0
    already_present: bool = False
    plan: Plan | None = None
    fit: str = ""

    @property
    def fits(self) -> bool | None:
        return None if self.plan is None else self.plan.fits


@dataclass(frozen=True)
class PullProgress:
    """One step of a pull. ``total``/``completed`` are bytes; ``digest`` is ``sha256:<hex>``.

    The last event of a successful pull has status ``success`` and carries :class:`PullResult`.
    """

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    result: PullResult | None = None

    def as_ollama(self) -> dict[str, object]:
        """The line Ollama's ``/api/pull`` streams for this event (fields it would leave out stay out)."""
        line: dict[str, object] = {"status": self.status}
        if self.digest is not None:
            line["digest"] = self.digest
        if self.total is not None:
            line["total"] = self.total
        if self.completed is not None:
            line["completed"] = self.completed
        return line
