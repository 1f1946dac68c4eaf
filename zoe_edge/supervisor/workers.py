"""What the slot needs from a worker, so that something other than a real process can be one.

:class:`zoe_edge.worker.client.WorkerProcess` is the implementation the daemon runs; tests hand
the supervisor a factory that makes in-process fakes instead, and exercise the real scheduling,
swap and retry code without a model or a subprocess.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from zoe_edge.canonical import Event, GenerationRequest
from zoe_edge.worker.client import WorkerProcess
from zoe_edge.worker.control import GenerationControl
from zoe_edge.worker.protocol import Embedded, LoadSpec, ModelInfo


class WorkerClient(Protocol):
    """One worker: started at most once, loads at most one model, streams one generation at a time."""

    label: str  # for logs; the slot renames a spare when it takes it for a model

    @property
    def pid(self) -> int | None: ...  # None until started

    @property
    def alive(self) -> bool: ...

    @property
    def prefix_cache(self) -> dict[str, Any] | None: ...  # the worker's prefix-cache figures after its last request

    async def start(self, timeout: float = 60.0) -> None:
        """Become ready to load; raises :class:`~zoe_edge.errors.WorkerFailed` when it cannot."""
        ...

    async def load(self, spec: LoadSpec, timeout: float) -> ModelInfo:
        """Load ``spec``; raises :class:`~zoe_edge.errors.ModelLoadFailed` (or ``WorkerFailed``) when it cannot."""
        ...

    def generate(
        self,
        req: GenerationRequest,
        stall_timeout: float,
        coalesce_ms: float = 0.0,
        control: GenerationControl | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Stream events; a death or stall arrives as an ``ErrorEvent`` (worker_crashed, worker_timeout).

        With ``control`` the generation can be suspended between tokens (the stream attaches its
        transport, marks the first event and the end, and reports what the worker did)."""
        ...

    async def embed(self, texts: list[str], truncate: bool, timeout: float) -> Embedded:
        """One vector per text; a death or stall is ``ServiceUnavailable`` (worker_crashed, worker_timeout)."""
        ...

    async def exit_status(self, wait: float) -> int | None:
        """The exit status once ended (waiting up to ``wait`` s), negative for a signal; ``None`` while running."""
        ...

    async def kill(self) -> None: ...

    async def stop(self, grace: float = 5.0) -> None: ...


# given a label, a worker not yet started
WorkerFactory = Callable[[str], WorkerClient]


def spawn_process(label: str) -> WorkerClient:
    """The daemon's workers: a ``python -m zoe_edge.worker`` subprocess each."""
    return WorkerProcess(label=label)
