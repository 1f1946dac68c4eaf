"""Suspend a streaming generation between two tokens and serve other requests meanwhile (worker side).

The daemon asks with ``{"op": "suspend"}`` on the generation's own connection (the frames are in
:mod:`zoe_edge.worker.protocol`). A watcher thread turns the daemon's frames into flags
(:class:`Ops`); the engine calls a :class:`Suspender` between two tokens, while ``Llama.generate``
is parked at its ``yield``. When a suspension is pending there, the suspender copies the live
sequence out (KV cells, token ids, the sampler chain), says ``suspended``, serves the connections
that queue on the worker's socket one at a time, and on ``resume`` puts everything back: the parked
generator then evaluates the token it yielded and goes on exactly as if it had never stopped.

The watcher wakes the main thread through a socketpair, so a resume or a cancel is seen at once
and a new connection is accepted the moment it arrives (a selector, not a polling sleep).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from zoe_edge.worker.protocol import ProtocolError, recv_frame

if TYPE_CHECKING:
    from zoe_edge.worker.engine import Engine

log = logging.getLogger("zoe_edge.worker")

Outcome = Literal["resume", "cancel", "exit"]
# the worker's own parent check while it serves others; a resume or cancel wakes it sooner
PARENT_CHECK_S = 1.0


@dataclass(frozen=True)
class Pause:
    """One suspension, as the generation's timings count it."""

    paused_ms: float  # from the start of the save to the end of the restore
    cost_ms: float  # the save and the restore themselves


class WorkerExit(Exception):
    """A shutdown arrived while a generation was suspended: that generation ends, then the worker."""


class Ops:
    """The daemon's frames on one generate connection, read by a watcher thread into flags.

    ``suspend`` marks a suspension pending (taken up at the next token boundary); ``resume``
    withdraws a pending one, or ends a suspension in progress; any other frame, a broken frame or
    the end of the connection cancels the generation.
    """

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._pending = False  # asked, not yet taken up at a token boundary
        self._suspended = False  # the main thread is serving other connections
        self._resume = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._watch, name="generate-ops", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """After the generation (its connection already shut down, which ends the watcher)."""
        self._thread.join(timeout=1.0)
        self._wake_r.close()
        self._wake_w.close()

    @property
    def pending(self) -> bool:
        # read without the lock, once per token: a stale False only delays the pause by one token
        return self._pending

    @property
    def waker(self) -> socket.socket:
        """Readable when a flag changed; drain it with :meth:`drain`."""
        return self._wake_r

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def apply(self, op: object) -> bool:
        """Record one frame's op; ``False`` when it cancels the generation."""
        with self._lock:
            if op == "suspend":
                self._pending = not self._suspended
                return True
            if op == "resume":
                if self._suspended:
                    self._resume = True
                    self._wake()
                else:
                    self._pending = False  # taken back before a token boundary: no frames
                return True
        self.cancel.set()
        self._wake()
        return False

    def claim(self, accept: bool) -> bool:
        """At a token boundary: take a pending suspension up (``accept``) or drop it; ``False``: none pending.

        Atomic with :meth:`apply`, so a resume sent right after the suspend is never lost: it
        either withdrew the request before this or ends the suspension this starts.
        """
        with self._lock:
            if not self._pending:
                return False
            self._pending = False
            self._suspended = accept
            self._resume = False
            return True

    def release(self) -> None:
        """The suspension :meth:`claim` took up did not happen after all (the state could not be saved)."""
        with self._lock:
            self._suspended = self._resume = False

    def outcome(self) -> Outcome | None:
        """What ends the suspension in progress, if anything has yet (a cancel wins over a resume)."""
        if self.cancel.is_set():
            return "cancel"
        with self._lock:
            if self._resume:
                self._suspended = self._resume = False
                return "resume"
        return None

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _watch(self) -> None:
        try:
            while self.apply(_op(recv_frame(self.conn))):
                pass
        except (ProtocolError, OSError, ValueError):
            self.apply("cancel")


def _op(frame: dict[str, Any] | None) -> object:
    return frame.get("op") if frame is not None else None


def serve_until_resumed(
    server: socket.socket, ops: Ops, serve_one: Callable[[socket.socket], bool], parent: int
) -> Outcome:
    """Serve the connections queued on ``server`` one at a time until ``ops`` says resume or cancel.

    ``serve_one`` handles one connection and returns ``False`` for a shutdown; a daemon that went
    away counts as one too.
    """
    with selectors.DefaultSelector() as selector:
        selector.register(server, selectors.EVENT_READ)
        selector.register(ops.waker, selectors.EVENT_READ)
        while True:
            outcome = ops.outcome()
            if outcome is not None:
                return outcome
            for key, _ in selector.select(PARENT_CHECK_S):
                if key.fileobj is ops.waker:
                    ops.drain()
                    continue
                try:
                    conn, _ = server.accept()
                except (BlockingIOError, TimeoutError):
                    continue  # the client gave up between the wake-up and the accept
                conn.settimeout(None)
                with conn:
                    if not serve_one(conn):
                        return "exit"
            if os.getppid() != parent:
                log.warning("daemon went away while a generation was suspended")
                return "exit"


class Suspender:
    """The engine's checkpoint for one generation: a pause when the daemon asked for one.

    ``nested`` is a generation served while another is suspended; it refuses (one saved state at a
    time). ``serve`` runs the suspension (:func:`serve_until_resumed` on the worker's socket).
    """

    def __init__(
        self,
        engine: Engine,
        ops: Ops,
        send: Callable[[dict[str, Any]], bool],
        serve: Callable[[Ops], Outcome],
        nested: bool = False,
    ) -> None:
        self.engine = engine
        self.ops = ops
        self.send = send
        self.serve = serve
        self.nested = nested

    def __call__(self) -> Pause | None:
        if not self.ops.pending or self.ops.cancel.is_set():
            return None
        reason = self._refusal()
        if not self.ops.claim(accept=reason is None):
            return None
        if reason is not None:
            log.info("suspend refused: %s", reason)
            self.send({"t": "suspend_refused", "reason": reason})
            return None
        return self._pause()

    def _refusal(self) -> str | None:
        if self.nested:
            return "another generation is suspended on this worker"
        limit = self.engine.spec.suspend_bytes
        if limit <= 0:
            return "suspension is off for this model (suspend_bytes is 0)"
        size = self.engine.llm.seq_state_size()
        if size > limit:
            return f"the sequence state takes {size} bytes, over the {limit} bytes allowed"
        return None

    def _pause(self) -> Pause | None:
        llm, prefix = self.engine.llm, self.engine.prefix_cache
        started = time.perf_counter()
        try:
            state = llm.save_live()
        except RuntimeError as exc:
            self.ops.release()
            self.send({"t": "suspend_refused", "reason": str(exc)})
            return None
        save_ms = (time.perf_counter() - started) * 1000.0
        prompt_len = prefix.live_prompt_len
        # the live KV is saved here already: a nested request must not spend time snapshotting it again
        prefix.note_prompt(0)
        log.info("suspended after %d tokens (%d bytes, saved in %.1f ms)", len(state.tokens), state.size, save_ms)
        self.send({"t": "suspended", "tokens": len(state.tokens), "state_bytes": state.size, "save_ms": save_ms})
        outcome = self.serve(self.ops)
        if outcome == "exit":
            raise WorkerExit()
        if outcome == "cancel":
            if llm.cached_tokens() == list(state.tokens):
                prefix.note_prompt(prompt_len)  # nothing ran meanwhile: the live KV is still ours
            paused_ms = (time.perf_counter() - started) * 1000.0
            return Pause(paused_ms, save_ms)
        restore_started = time.perf_counter()
        try:
            llm.restore_live(state)
        except RuntimeError:
            prefix.note_prompt(0)  # the KV is cleared: nothing of it is worth a snapshot
            raise
        prefix.note_prompt(prompt_len)
        ended = time.perf_counter()
        restore_ms = (ended - restore_started) * 1000.0
        paused_ms = (ended - started) * 1000.0
        log.info("resumed after %.0f ms (restored in %.1f ms)", paused_ms, restore_ms)
        self.send({"t": "resumed", "restore_ms": restore_ms, "paused_ms": paused_ms})
        return Pause(paused_ms, save_ms + restore_ms)
