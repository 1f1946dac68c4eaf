"""The slot's states, the transitions allowed between them, and the one place that makes them.

Every change of the slot's state goes through :meth:`SlotMachine.move`, so a sequence the code
was never meant to produce (serving from a slot that is still loading, say) stops at once with
:class:`InvalidTransition` instead of showing up later as a wrong ``/admin/status``.
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("zoe_edge.supervisor")


class SlotState(str, enum.Enum):
    UNLOADED = "unloaded"  # no worker holds a model
    LOADING = "loading"  # a worker is starting or loading ``model``
    READY = "ready"  # ``model`` is loaded and nobody is generating
    BUSY = "busy"  # one request holds the slot and streams from it
    UNLOADING = "unloading"  # the worker is being stopped
    FAILED = "failed"  # ``model`` failed to load (or crash-looped) and rests in its back-off


_S = SlotState
TRANSITIONS: Mapping[SlotState, frozenset[SlotState]] = {
    # FAILED from an empty slot: the file broke before any load began, or the worker crash-looped
    _S.UNLOADED: frozenset({_S.LOADING, _S.FAILED}),
    # UNLOADED: the load was interrupted (cancelled, or killed by a signal: no verdict on the file)
    _S.LOADING: frozenset({_S.READY, _S.FAILED, _S.UNLOADED}),
    _S.READY: frozenset({_S.BUSY, _S.UNLOADING}),
    # UNLOADING while busy: memory pressure or shutdown does not wait for the stream
    _S.BUSY: frozenset({_S.READY, _S.UNLOADING}),
    _S.UNLOADING: frozenset({_S.UNLOADED}),
    # FAILED again: a further failure of the same model restarts its back-off
    _S.FAILED: frozenset({_S.LOADING, _S.FAILED}),
}
# the states that begin a new occupancy of the slot, which ``since`` dates
_NEW_OCCUPANCY = frozenset({_S.LOADING, _S.UNLOADED})


class InvalidTransition(RuntimeError):
    """The code asked for a transition the table does not allow: a bug in the supervisor, not a client error."""

    def __init__(self, current: SlotState, target: SlotState, why: str) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "nothing"
        super().__init__(
            f"internal error: slot transition {current.value} -> {target.value} is not allowed "
            f"({why}); from {current.value} only {allowed}"
        )
        self.current = current
        self.target = target


@dataclass(frozen=True)
class Transition:
    before: SlotState
    after: SlotState
    model: str | None
    at: float  # wall clock, as ``since`` is
    why: str


class _Keep(enum.Enum):
    KEEP = enum.auto()  # a sentinel that mypy can tell from a model name and from None


_KEEP = _Keep.KEEP


class SlotMachine:
    """The slot's state and model, changed only by :meth:`move`."""

    def __init__(self) -> None:
        self.state = SlotState.UNLOADED
        self.model: str | None = None
        self.since = time.time()  # when the current occupancy (a load, or the empty slot) began
        self.changed_at = self.since  # when the state last changed
        self.history: collections.deque[Transition] = collections.deque(maxlen=50)

    def move(self, target: SlotState, why: str, *, model: str | _Keep | None = _KEEP) -> Transition:
        """Enter ``target`` (and hold ``model`` when given), or raise :class:`InvalidTransition`."""
        if target not in TRANSITIONS[self.state]:
            raise InvalidTransition(self.state, target, why)
        if not isinstance(model, _Keep):
            self.model = model
        now = time.time()
        step = Transition(self.state, target, self.model, now, why)
        self.state, self.changed_at = target, now
        if target in _NEW_OCCUPANCY:
            self.since = now
        self.history.append(step)
        log.debug("slot %s -> %s (%s; model %r)", step.before.value, target.value, why, self.model)
        return step
