"""Who holds the slot and who waits for it: admission, the queue, and the scheduler loop.

Requests are admitted (or refused at once as busy, queue full, too large) and wait on a ticket;
one task, the loop here, takes the next ticket as :func:`.scheduler.choose_next` says, has the
:class:`~.loading.Loader` load, swap or resize for it, and grants it the worker. A granted request
holds the slot until it calls :meth:`SlotQueue.release`.

Priorities order the queue (:func:`.scheduler.choose_next`). An interactive request that finds a
background generation streaming asks it to pause between two tokens (:func:`.scheduler.should_suspend`,
carried out through the generation's :class:`~zoe_edge.worker.control.GenerationControl`); while
it is paused only interactive requests for the same model are served, then it goes on where it was.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

from zoe_edge.canonical import Priority
from zoe_edge.errors import Failure, ServiceUnavailable, ZoeError
from zoe_edge.gguf_info import GGUFError
from zoe_edge.supervisor import device, scheduler
from zoe_edge.supervisor.loading import Loader, ModelTooLarge, unreadable
from zoe_edge.supervisor.planner import ContextDecision
from zoe_edge.supervisor.records import PredictionLog, SuspensionStats
from zoe_edge.supervisor.state import InvalidTransition, SlotState
from zoe_edge.supervisor.workers import WorkerClient
from zoe_edge.worker.control import GenerationControl

log = logging.getLogger("zoe_edge.supervisor")

MiB = device.MiB
MEMORY_CHECK_S = 5.0
# how long a background generation may take to reach its next token boundary and save its state
SUSPEND_ACK_S = 2.0


def shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable("zoe-edge is shutting down", code=Failure.SHUTTING_DOWN, retry_after=5)


@dataclass(eq=False)  # identity: a ticket is one request, found in lists by ``is``
class Ticket:
    model: str | None  # None: an unload request
    enqueued_at: float
    granted: asyncio.Future[WorkerClient | None]
    n_ctx: int | None = None  # the context the request asks for
    context: ContextDecision | None = None  # what the scheduler decided for it, set before the grant
    priority: Priority = Priority.NORMAL
    prompt_tokens: int = 0  # estimated from the request's text
    max_tokens: int | None = None
    limit_s: float = math.inf  # the longest it may stay queued
    strict: bool = False  # ``limit_s`` is the request's own deadline: a bound, checked by the clock
    prediction: scheduler.Prediction = field(default_factory=lambda: scheduler.Prediction(0.0, ""))
    granted_at: float | None = None
    control: GenerationControl | None = None  # a generation that can be paused between tokens
    suspend_refused: bool = False  # asked once and refused: not asked again
    paused_since: float | None = None

    def waiting(self) -> scheduler.Waiting:
        return scheduler.Waiting(self.model or "", self.enqueued_at, self.priority, self.prompt_tokens, self.max_tokens)


class SlotQueue:
    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.registry = loader.registry
        self.settings = loader.settings
        self.admission = loader.admission
        self.profile = loader.profile
        self.waiting: list[Ticket] = []
        self.holder: Ticket | None = None  # the request streaming from the worker
        self.suspended: Ticket | None = None  # a background generation paused for interactive requests
        self.speeds: dict[str, scheduler.Speed] = {}  # measured per model (see Supervisor.generate)
        self.predictions = PredictionLog()
        self.suspension = SuspensionStats()
        self._preempting: asyncio.Task[None] | None = None
        self._crash_reported: collections.deque[int] = collections.deque(maxlen=8)  # workers whose death counted
        self.ttl_override: dict[str, float | None] = {}
        self.closing = False
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="zoe-slot")

    @property
    def busy_with(self) -> str | None:
        """The model the slot is serving (a suspended generation's model counts: it pins the worker)."""
        held = self.holder or self.suspended
        return held.model if held is not None else None

    def wake(self) -> None:
        self._wake.set()

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

    def running(self) -> scheduler.Running | None:
        hold = self.holder
        if hold is None or hold.model is None or hold.granted_at is None:
            return None
        return scheduler.Running(
            hold.model,
            hold.priority,
            hold.granted_at,
            hold.prompt_tokens,
            hold.max_tokens,
            suspendable=self._can_suspend(hold),
        )

    def _can_suspend(self, hold: Ticket) -> bool:
        plan = self.loader.plan
        return (
            self.admission.suspend
            and self.suspended is None
            and not hold.suspend_refused
            and hold.control is not None
            and hold.control.suspendable
            and plan is not None
            and plan.suspend_bytes > 0
        )

    def predict(self, model: str, priority: Priority = Priority.NORMAL) -> scheduler.Prediction:
        return scheduler.predict_wait(
            model,
            priority,
            queue=[t.waiting() for t in self.waiting if t.model],
            running=self.running(),
            loaded=self.loader.model,
            speeds=self._speeds(),
            now=time.monotonic(),
            starvation_s=self.admission.starvation,
            suspended=self.suspended is not None,
        )

    def expected_wait(self, model: str, priority: Priority = Priority.NORMAL) -> float:
        return self.predict(model, priority).wait_s

    def _speeds(self) -> dict[str, scheduler.Speed]:
        out = dict(self.speeds)
        for name, stats in self.loader.stats.items():
            base = out.get(name, scheduler.Speed())
            if stats.load_s is not None:
                out[name] = dataclasses.replace(base, load_s=stats.load_s)
        return out

    async def admit(
        self,
        model: str,
        deadline: float | None,
        n_ctx: int | None = None,
        *,
        priority: Priority = Priority.NORMAL,
        prompt_tokens: int = 0,
        max_tokens: int | None = None,
        strict: bool | None = None,
    ) -> Ticket:
        """Queue a request, or refuse it at once. ``deadline``: the request's own (route, header), which
        bounds its time in the queue; ``None``: the configured default, with time for a load on top."""
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
        prediction = self.predict(model, priority)
        if len(self.waiting) >= self.admission.max_queue:
            raise ServiceUnavailable(
                f"the local model is busy: {len(self.waiting)} requests are queued (limit {self.admission.max_queue})",
                code=Failure.QUEUE_FULL,
                retry_after=prediction.wait_s,
            )
        limit = self.admission.deadline if deadline is None else deadline
        if prediction.wait_s > limit:
            self.predictions.refused += 1
            raise ServiceUnavailable(
                f"the local model is busy: expected wait {prediction.wait_s:.1f} s exceeds the {limit:.1f} s "
                f"deadline ({prediction.reason})",
                code=Failure.BUSY,
                retry_after=prediction.wait_s,
            )
        strict = deadline is not None if strict is None else strict
        ticket = Ticket(
            model,
            time.monotonic(),
            asyncio.get_running_loop().create_future(),
            n_ctx,
            priority=priority,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            limit_s=limit if strict else limit + self.settings.load_timeout_s,
            strict=strict,
            prediction=prediction,
        )
        self.waiting.append(ticket)
        self._wake.set()
        return ticket

    async def await_grant(self, ticket: Ticket) -> WorkerClient | None:
        """Wait for the slot. A request still queued when its limit passes leaves the queue (``busy``,
        before any byte was sent), so that a route can try its next target."""
        left = ticket.limit_s - (time.monotonic() - ticket.enqueued_at)
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.granted), max(0.0, left))
        except asyncio.TimeoutError:
            self.withdraw(ticket)
            if ticket.granted.done() and not ticket.granted.cancelled():
                # granted in the same instant: withdraw handed the slot back; the request goes elsewhere
                pass
            self.predictions.expired += 1
            what = "deadline" if ticket.strict else "limit"
            raise ServiceUnavailable(
                f"the local model did not become free within the request's {ticket.limit_s:.1f} s {what} "
                f"(predicted wait {ticket.prediction.wait_s:.2f} s: {ticket.prediction.reason})",
                code=Failure.BUSY,
                retry_after=max(1.0, self.expected_wait(ticket.model or "", ticket.priority)),
            ) from None
        except asyncio.CancelledError:
            self.withdraw(ticket)
            raise

    def withdraw(self, ticket: Ticket) -> None:
        """A waiter gave up: drop its ticket, or hand the slot back if it was granted meanwhile."""
        if ticket in self.waiting:
            self.waiting.remove(ticket)
        if ticket.granted.done() and not ticket.granted.cancelled() and ticket.granted.exception() is None:
            self.release(ticket, 0.0, count=False)
        elif not ticket.granted.done():
            ticket.granted.cancel()

    # --- the holder gives the slot back -------------------------------------------------------------

    def release(self, ticket: Ticket, elapsed: float, *, crashed: bool = False, count: bool = True) -> None:
        model = ticket.model
        if model is not None and count:
            stats = self.loader.stats[model]
            stats.requests += 1
            stats.service_s = scheduler.ewma(stats.service_s, elapsed)
        if crashed and model is not None and self._first_to_report(ticket):
            self.loader.stats[model].crashes.append(time.monotonic())
        if ticket is self.suspended:
            # it ended while paused (its client left, or the worker died): nothing to resume
            self.suspended = None
        elif ticket is self.holder:
            self.holder = None
        self.loader.last_used = time.monotonic()
        if self.holder is None and self.suspended is None and self.loader.state is SlotState.BUSY:
            self.loader.machine.move(SlotState.READY, f"{model!r} released the slot")
        self._wake.set()

    def _first_to_report(self, ticket: Ticket) -> bool:
        """Whether this ticket is the first to report its worker's death: a worker that dies while a
        generation is suspended ends two streams, and one death must count once towards the crash loop."""
        granted = ticket.granted
        if not granted.done() or granted.cancelled() or granted.exception() is not None:
            return True
        worker = granted.result()
        if worker is None or worker.pid is None:
            return True
        key = worker.pid
        if key in self._crash_reported:
            return False
        self._crash_reported.append(key)
        return True

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
        if self.holder is not None:
            self._maybe_suspend(self.holder)
            return
        if self.suspended is not None:
            self._serve_while_suspended(self.suspended)
            return
        while self.holder is None and self.waiting:
            if self.waiting[0].model is None or all(t.model is None for t in self.waiting):
                unload = next(t for t in self.waiting if t.model is None)
                self.waiting.remove(unload)
                await self.loader.stop_worker("requested")
                if not unload.granted.done():
                    unload.granted.set_result(None)
                continue
            pending = [t for t in self.waiting if t.model is not None]
            choice = scheduler.choose_next(
                [t.waiting() for t in pending],
                self.loader.model if self.loader.worker is not None else None,
                self.loader.loaded_since,
                time.monotonic(),
                self.admission.min_residency,
                self.admission.starvation,
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
            self._grant(ticket, worker)

    def _grant(self, ticket: Ticket, worker: WorkerClient) -> None:
        now = time.monotonic()
        ticket.granted_at = now
        self.holder = ticket
        if ticket.prediction.contended:  # a free slot's "0 s" says nothing about the predictor
            self.predictions.record(ticket.prediction.wait_s, now - ticket.enqueued_at, ticket.priority)
        ticket.granted.set_result(worker)

    # --- suspending a background generation for interactive requests ---------------------------

    def _fits_loaded(self, ticket: Ticket) -> bool:
        """Whether a request can run on the loaded worker as it is (a suspended generation pins it: no
        resize, no swap); one that asks for a larger context waits for the background generation."""
        current = self.loader.loaded_n_ctx()
        return ticket.model == self.loader.model and (not ticket.n_ctx or (current or 0) >= ticket.n_ctx)

    def _maybe_suspend(self, hold: Ticket) -> None:
        running = self.running()
        fitting = [t.waiting() for t in self.waiting if t.model and self._fits_loaded(t)]
        why = scheduler.should_suspend(running, fitting, self.loader.model)
        if why is None or self._preempting is not None:
            return
        self._preempting = asyncio.create_task(self._suspend(hold, why), name="zoe-suspend")

    async def _suspend(self, hold: Ticket, why: str) -> None:
        try:
            assert hold.control is not None
            started = time.monotonic()
            log.info("suspending the background generation for %r: %s", hold.model, why)
            done = await hold.control.suspend(SUSPEND_ACK_S)
            if done is None:
                hold.suspend_refused = True
                self.suspension.refusals += 1
                self.suspension.last_refusal = hold.control.refusal or "the generation ended first"
                log.info("background generation not suspended: %s", self.suspension.last_refusal)
                return
            if hold is not self.holder:  # it ended while the worker paused it: let it go on (it is gone)
                hold.control.resume()
                return
            self.holder = None
            self.suspended = hold
            hold.paused_since = time.monotonic()
            self.suspension.suspended(done, (hold.paused_since - started) * 1000.0)
        finally:
            self._preempting = None
            self._wake.set()

    def _serve_while_suspended(self, paused: Ticket) -> None:
        assert paused.paused_since is not None
        worker = self.loader.worker
        pending = [t for t in self.waiting if t.model is not None and self._fits_loaded(t)]
        index, why = scheduler.next_while_suspended(
            [t.waiting() for t in pending],
            self.loader.model,
            paused.paused_since,
            time.monotonic(),
            self.admission.starvation,
        )
        if index is not None and worker is not None:
            ticket = pending[index]
            self.waiting.remove(ticket)
            if not ticket.granted.done():
                current = self.loader.loaded_n_ctx() or 0
                ticket.context = ContextDecision(
                    current,
                    False,
                    f"served at the loaded {current}: a background generation is suspended",
                    ticket.n_ctx,
                )
                log.info("serving an interactive request for %r: %s", ticket.model, why)
                self._grant(ticket, worker)
            else:
                self._wake.set()  # that one gave up; look again
            return
        log.info("resuming the background generation for %r: %s", paused.model, why)
        if time.monotonic() - paused.paused_since >= self.admission.starvation:
            # it yielded for a whole starvation bound: it finishes now, or a stream of voice turns
            # would pause it again after every token
            paused.suspend_refused = True
        self.suspended = None
        self.holder = paused
        paused.paused_since = None
        self.suspension.resumes += 1
        assert paused.control is not None
        paused.control.resume()

    def _fail_waiting(self, ticket: Ticket, exc: Exception) -> None:
        """A load failed: its requester and everyone queued for the same model get the error."""
        for t in [ticket, *[t for t in self.waiting if t.model == ticket.model]]:
            if t in self.waiting:
                self.waiting.remove(t)
            if not t.granted.done():
                t.granted.set_exception(exc)

    def queue_by_model(self) -> dict[str, int]:
        return dict(collections.Counter(t.model for t in self.waiting if t.model))

    def queue_by_priority(self) -> dict[str, int]:
        counts = collections.Counter(t.priority.value for t in self.waiting if t.model)
        return {p.value: counts.get(p.value, 0) for p in Priority}
