"""Suspend and resume one streaming generation between two tokens: the daemon's side of it.

The scheduler holds a :class:`GenerationControl` for each generation it may want to pause. The
stream that carries the generation (:meth:`zoe_edge.worker.client.WorkerProcess.generate`, or a
test's in-process fake) attaches a transport that delivers ``"suspend"`` and ``"resume"`` to where
the tokens are made, and reports back what happened there (:meth:`confirm_suspended`,
:meth:`confirm_resumed`, :meth:`refuse`). The wire frames are in :mod:`zoe_edge.worker.protocol`.

A suspension is asked for, not assumed: the worker pauses at its next token boundary, saves the
sequence's KV cells and sampler, says ``suspended``, and only then may another request run on
the model. A worker that cannot (no token yet, no room for the state) says so, and the scheduler
lets the newcomer wait or fall back by its deadline instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("zoe_edge.worker")


@dataclass(frozen=True)
class Suspended:
    """The worker paused the generation and saved its state."""

    tokens: int  # KV cells saved (prompt and generated tokens evaluated so far)
    state_bytes: int
    save_ms: float


@dataclass(frozen=True)
class Resumed:
    """The worker put the state back and goes on generating."""

    restore_ms: float
    paused_ms: float  # from the suspension's start to the restore's end


class GenerationControl:
    """One generation's pause switch. Created by the scheduler before the stream starts."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._send: Callable[[str], None] | None = None
        self._ack: asyncio.Future[Suspended | None] | None = None
        self._on_change = on_change
        self.started = False  # the first event arrived: the generation is between tokens from now on
        self.ended = False
        self.suspended: Suspended | None = None
        self.suspensions = 0
        self.last_resumed: Resumed | None = None
        self.refusal: str | None = None

    # --- the scheduler's side ----------------------------------------------------------------

    @property
    def suspendable(self) -> bool:
        return self._send is not None and self.started and not self.ended and self.suspended is None

    async def suspend(self, timeout: float) -> Suspended | None:
        """Pause the generation; ``None`` when it was not paused (refused, ended, too slow to answer).

        On a timeout the request is taken back (``resume``), so a late pause undoes itself at once.
        """
        if not self.suspendable or self._ack is not None:
            return None
        self._ack = asyncio.get_running_loop().create_future()
        self.refusal = None
        try:
            self._deliver("suspend")
            return await asyncio.wait_for(asyncio.shield(self._ack), timeout)
        except asyncio.TimeoutError:
            self.refusal = f"no answer to suspend within {timeout * 1000:.0f} ms"
            self._deliver("resume")
            return None
        finally:
            self._ack = None

    def resume(self) -> None:
        """Let a suspended generation go on (the worker restores its state first)."""
        self._deliver("resume")

    # --- the stream's side -------------------------------------------------------------------

    def attach(self, send: Callable[[str], None]) -> None:
        """``send(op)`` delivers ``"suspend"`` or ``"resume"`` to the running generation."""
        self._send = send

    def mark_started(self) -> None:
        if not self.started:
            self.started = True
            self._changed()

    def mark_ended(self) -> None:
        """The stream is over (finished, failed or closed): nothing can be suspended any more."""
        if self.ended:
            return
        self.ended = True
        self._send = None
        self.suspended = None  # a stream that ended while paused is not paused any more
        self._settle(None)
        self._changed()

    def confirm_suspended(self, suspended: Suspended) -> None:
        self.suspended = suspended
        self.suspensions += 1
        if self._ack is None:
            log.info("a suspension arrived after its request was taken back; resuming")
        self._settle(suspended)

    def confirm_resumed(self, resumed: Resumed) -> None:
        self.suspended = None
        self.last_resumed = resumed

    def refuse(self, reason: str) -> None:
        self.refusal = reason
        self._settle(None)

    # --- internals ---------------------------------------------------------------------------

    def _deliver(self, op: str) -> None:
        send = self._send
        if send is None:
            self._settle(None)
            return
        try:
            send(op)
        except (OSError, RuntimeError) as exc:  # the connection is gone: the stream will end on its own
            log.info("could not deliver %s to the worker: %s", op, exc)
            self._settle(None)

    def _settle(self, value: Suspended | None) -> None:
        if self._ack is not None and not self._ack.done():
            self._ack.set_result(value)

    def _changed(self) -> None:
        if self._on_change is not None:
            with contextlib.suppress(Exception):
                self._on_change()
