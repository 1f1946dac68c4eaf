"""Who holds the slot and who waits for it: admission, the queue, and the scheduler loop.

Requests are admitted (or refused at once as busy, queue full, too large) and wait on a ticket;
one task, the loop here, takes the next ticket as :func:`.scheduler.choose_next` says, has the
:class:`~.loading.Loader` load, swap or resize for it, and grants it the worker. A granted request
holds the slot until it calls :meth:`SlotQueue.release`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass

from zoe_edge.errors import Failure, ServiceUnavailable, ZoeError
from zoe_edge.gguf_info import GGUFError
from zoe_edge.supervisor import device, scheduler
from zoe_edge.supervisor.loading import Loader, ModelTooLarge, unreadable
from zoe_edge.supervisor.planner import ContextDecision
from zoe_edge.supervisor.state import InvalidTransition, SlotState
from zoe_edge.supervisor.workers import WorkerClient

log = logging.getLogger("zoe_edge.supervisor")

MiB = device.MiB
MEMORY_CHECK_S = 5.0


def shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable("zoe-edge is shutting down", code=Failure.SHUTTING_DOWN, retry_after=5)


@dataclass
class Ticket:
    model: str | None  # None: an unload request
    enqueued_at: float
    granted: asyncio.Future[WorkerClient | None]
    n_ctx: int | None = None  # the context the request asks for
    context: ContextDecision | None = None  # what the scheduler decided for it, set before the grant


class SlotQueue:
    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.registry = loader.registry
        self.settings = loader.settings
        self.admission = loader.admission
        self.profile = loader.profile
        self.waiting: list[Ticket] = []
        self.busy_with: str | None = None
        self.ttl_override: dict[str, float | None] = {}
        self.closing = False
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="zoe-slot")

    async def close(self) -> None:
        """Refuse everyone waiting and stop the loop (whatever it was doing is cancelled)."""
        self.closing = True
        for ticket in self.waiting:
            if not ticket.granted.done():
                ticket.granted.set_exception(shutting_down())
        self.waiting.clear()
        if self._loop_task is not None:
            # the loop also stops on its own once it sees closing: on Python 3.11 asyncio.wait_for can swallow
            # a cancellation that lands as its inner wait completes, and a loop left running would hang close()
            self._wake.set()
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    async def unload(self) -> None:
        """Queue an unload behind the work already admitted and wait until it is done."""
        ticket = Ticket(None, time.monotonic(), asyncio.get_running_loop().create_future())
        self.waiting.append(ticket)
        self._wake.set()
        await ticket.granted

    def set_keep_alive(self, model: str, ttl: float | None) -> None:
        self.ttl_override[model] = ttl
        self._wake.set()

    # --- admission ---------------------------------------------------------------------------

    def expected_wait(self, model: str) -> float:
        return scheduler.expected_wait(
            [scheduler.Waiting(t.model, t.enqueued_at) for t in self.waiting if t.model],
            busy_with=self.busy_with,
            loaded=self.loader.model,
            target=model,
            service_s={m: s.service_s for m, s in self.loader.stats.items() if s.service_s is not None},
            load_s={m: s.load_s for m, s in self.loader.stats.items() if s.load_s is not None},
        )

    async def admit(self, model: str, deadline: float | None, n_ctx: int | None = None) -> Ticket:
        if self.closing:
            raise shutting_down()
        self.loader.check_failure(model)
        if model != self.loader.model or self.loader.worker is None:
            try:
                plan = await self.loader.plan_for(model)
            except (GGUFError, OSError, ValueError) as exc:
                self.loader.record_failure(model, str(exc))
                raise unreadable(model, exc) from None
            if not plan.fits:
                raise ModelTooLarge(f"model {model!r} {plan.reason}", retry_after=60)
        if len(self.waiting) >= self.admission.max_queue:
            raise ServiceUnavailable(
                f"the local model is busy: {len(self.waiting)} requests are queued (limit {self.admission.max_queue})",
                code=Failure.QUEUE_FULL,
                retry_after=self.expected_wait(model),
            )
        limit = self.admission.deadline if deadline is None else deadline
        wait = self.expected_wait(model)
        if wait > limit:
            raise ServiceUnavailable(
                f"the local model is busy: expected wait {wait:.1f} s exceeds the {limit:.1f} s deadline",
                code=Failure.BUSY,
                retry_after=wait,
            )
        ticket = Ticket(model, time.monotonic(), asyncio.get_running_loop().create_future(), n_ctx)
        self.waiting.append(ticket)
        self._wake.set()
        return ticket

    async def await_grant(self, ticket: Ticket, deadline: float | None) -> WorkerClient | None:
        limit = (self.admission.deadline if deadline is None else deadline) + self.settings.load_timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.granted), limit)
        except asyncio.TimeoutError:
            self.withdraw(ticket)
            raise ServiceUnavailable(
                f"the local model did not become free within {limit:.0f} s", code=Failure.BUSY, retry_after=limit
            ) from None
        except asyncio.CancelledError:
            self.withdraw(ticket)
            raise

    def withdraw(self, ticket: Ticket) -> None:
        """A waiter gave up: drop its ticket, or hand the slot back if it was granted meanwhile."""
        if ticket in self.waiting:
            self.waiting.remove(ticket)
        if ticket.granted.done() and not ticket.granted.cancelled() and ticket.granted.exception() is None:
            self.release(ticket.model, 0.0, count=False)
        elif not ticket.granted.done():
            ticket.granted.cancel()

    # --- the holder gives the slot back -------------------------------------------------------------

    def release(self, model: str | None, elapsed: float, *, crashed: bool = False, count: bool = True) -> None:
        if model is not None and count:
            stats = self.loader.stats[model]
            stats.requests += 1
            stats.service_s = scheduler.ewma(stats.service_s, elapsed)
        if crashed and model is not None:
            self.loader.stats[model].crashes.append(time.monotonic())
        self.busy_with = None
        self.loader.last_used = time.monotonic()
        if self.loader.state is SlotState.BUSY:
            self.loader.machine.move(SlotState.READY, f"{model!r} released the slot")
        self._wake.set()

    # --- the scheduler loop (the only code that loads and unloads) -----------------------------

    def _ttl(self, model: str) -> float | None:
        if model in self.ttl_override:
            return self.ttl_override[model]
        entry = self.registry.models.get(model)
        # a model a reload removed stays loaded only for the requests already routed to it
        return entry.ttl if entry is not None else 0.0

    def idle_unload_at(self) -> float | None:
        """Seconds until the loaded model unloads for idleness; ``None`` while busy or kept forever."""
        deadline = self.idle_deadline()
        return None if deadline is None else deadline - time.monotonic()

    def idle_deadline(self) -> float | None:
        if self.loader.model is None or self.busy_with is not None or self.waiting:
            return None
        ttl = self._ttl(self.loader.model)
        return None if ttl is None else self.loader.last_used + ttl

    async def _run(self) -> None:
        while not self.closing:
            deadline = self.idle_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self.loader.worker is not None and not self.profile.simulated:
                # the rest of the house may take memory at any time: look again every few seconds
                timeout = MEMORY_CHECK_S if timeout is None else min(timeout, MEMORY_CHECK_S)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self.closing:
                return
            try:
                await self._step()
            except Exception:  # the loop must survive anything one step does
                log.exception("scheduler step failed")

    async def _step(self) -> None:
        worker = self.loader.worker
        if worker is not None and not worker.alive and self.busy_with is None:
            await self.loader.worker_died()
        deadline = self.idle_deadline()
        if deadline is not None and time.monotonic() >= deadline:
            await self.loader.stop_worker(f"idle for {self._ttl(self.loader.model or ''):.0f} s (ttl)")
            return
        if self.loader.worker is not None and not self.profile.simulated:
            idle = self.busy_with is None and not self.waiting
            available = device.refresh(self.profile).available_bytes
            pressure = scheduler.memory_pressure(available, self.registry.device.reserve_mb * MiB, idle)
            if pressure is not None:
                log.warning("unloading %r: %s", self.loader.model, pressure)
                self.loader.last_error = pressure
                await self.loader.stop_worker(pressure)
                return
        while self.busy_with is None and self.waiting:
            if self.waiting[0].model is None or all(t.model is None for t in self.waiting):
                unload = next(t for t in self.waiting if t.model is None)
                self.waiting.remove(unload)
                await self.loader.stop_worker("requested")
                if not unload.granted.done():
                    unload.granted.set_result(None)
                continue
            pending = [t for t in self.waiting if t.model is not None]
            choice = scheduler.choose_next(
                [scheduler.Waiting(t.model or "", t.enqueued_at) for t in pending],
                self.loader.model if self.loader.worker is not None else None,
                self.loader.loaded_since,
                time.monotonic(),
                self.admission.min_residency,
            )
            if choice is None:
                return
            ticket = pending[choice.index]
            self.waiting.remove(ticket)
            if ticket.granted.done():  # the client gave up while queued
                continue
            assert ticket.model is not None
            try:
                worker, ticket.context = await self.loader.ensure_loaded(ticket.model, choice.reason, ticket.n_ctx)
            except ZoeError as exc:
                self._fail_waiting(ticket, exc)
                continue
            if ticket.granted.done():
                continue
            try:
                self.loader.machine.move(SlotState.BUSY, f"serving a request for {ticket.model!r}")
            except InvalidTransition as exc:
                # a bug: the requester hears it now rather than waiting out its deadline, and the loop logs it
                self._fail_waiting(ticket, exc)
                raise
            self.busy_with = ticket.model
            ticket.granted.set_result(worker)

    def _fail_waiting(self, ticket: Ticket, exc: Exception) -> None:
        """A load failed: its requester and everyone queued for the same model get the error."""
        for t in [ticket, *[t for t in self.waiting if t.model == ticket.model]]:
            if t in self.waiting:
                self.waiting.remove(t)
            if not t.granted.done():
                t.granted.set_exception(exc)

    def queue_by_model(self) -> dict[str, int]:
        return dict(collections.Counter(t.model for t in self.waiting if t.model))
