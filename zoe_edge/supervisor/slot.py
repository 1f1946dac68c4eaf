"""The single model slot: one worker process, one loaded model, one generation at a time.

The slot carries out decisions made elsewhere (:mod:`.planner` says whether a model fits,
:mod:`.scheduler` says who goes next and how long a newcomer would wait). One task, the
scheduler loop, owns every load, swap and unload (through :class:`~.loading.Loader`), so a client
that disconnects mid-load cannot leave the slot half swapped. Requests hold the slot only while
they stream.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import psutil

from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, Priority
from zoe_edge.config import Settings
from zoe_edge.errors import Failure, InvalidRequest, ServiceUnavailable, ZoeError
from zoe_edge.gguf_info import GGUFError
from zoe_edge.registry import Registry
from zoe_edge.supervisor import device, scheduler, speeds
from zoe_edge.supervisor.loading import Loader, ModelTooLarge, default_threads, load_spec
from zoe_edge.supervisor.planner import Budget, ContextDecision, Plan
from zoe_edge.supervisor.queueing import SlotQueue, Ticket
from zoe_edge.supervisor.records import LoadFailure, MemoryStatus, ModelStats, SlotStatus, SupervisorStatus, SwapRecord
from zoe_edge.supervisor.state import InvalidTransition, SlotState
from zoe_edge.supervisor.workers import WorkerClient, WorkerFactory
from zoe_edge.worker.control import GenerationControl
from zoe_edge.worker.protocol import Embedded, ModelInfo

__all__ = [
    "SERVED_CONTEXT",
    "InvalidTransition",
    "ModelTooLarge",
    "SlotState",
    "Supervisor",
    "default_threads",
    "load_spec",
]

log = logging.getLogger("zoe_edge.supervisor")

MiB = device.MiB
# The context decision for the generation this task is streaming, set by Supervisor.generate once the
# slot is granted (the API handler iterates the stream in its own task, so it sees the value); the
# fronts turn it into x-zoe-context headers. None: no local generation was started in this context.
SERVED_CONTEXT: contextvars.ContextVar[ContextDecision | None] = contextvars.ContextVar(
    "zoe_served_context", default=None
)


class Supervisor:
    def __init__(
        self,
        registry: Registry,
        registry_dir: Path,
        settings: Settings,
        worker_factory: WorkerFactory | None = None,
    ) -> None:
        """``worker_factory`` makes an unstarted worker from a label; the default spawns ``zoe_edge.worker``."""
        self.registry = registry
        self.registry_dir = registry_dir
        self.settings = settings
        self.admission = registry.admission
        self.profile = device.detect(settings.profile or registry.device.profile)
        self.loader = Loader(registry, registry_dir, settings, self.profile, worker_factory)
        self.queue = SlotQueue(self.loader)
        self.last_tokens_per_s: float | None = None
        self._served_by: set[int | None] = set()  # workers that have evaluated a prompt already

    def use_registry(self, registry: Registry) -> None:
        """A reloaded registry, for every decision from now on. The loaded worker keeps running: a caller
        that changed the loaded model's entry unloads it (after in-flight work) so the next load reads the
        new entry. Admission and device figures are read at start and need a restart."""
        self.registry = self.loader.registry = self.queue.registry = registry

    # --- the slot's figures, kept by the loader ------------------------------------------------

    @property
    def state(self) -> SlotState:
        return self.loader.state

    @property
    def model(self) -> str | None:
        """The model in the slot: loaded, loading or failed (see :attr:`loaded` for one that can serve)."""
        return self.loader.model

    @property
    def since(self) -> float:
        return self.loader.machine.since

    @property
    def info(self) -> ModelInfo | None:
        return self.loader.info

    @property
    def plan(self) -> Plan | None:
        return self.loader.plan

    @property
    def last_error(self) -> str | None:
        return self.loader.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self.loader.last_error = value

    @property
    def last_context(self) -> dict[str, Any] | None:
        return self.loader.last_context

    @property
    def failures(self) -> dict[str, LoadFailure]:
        return self.loader.failures

    @property
    def stats(self) -> dict[str, ModelStats]:
        return self.loader.stats

    @property
    def swap_records(self) -> list[SwapRecord]:
        return list(self.loader.swaps)

    @property
    def swaps(self) -> list[dict[str, Any]]:
        """The recent loads as the dashboard and ``/admin/status`` read them, oldest first."""
        return [s.as_dict() for s in self.loader.swaps]

    @property
    def swap_listeners(self) -> list[Callable[[dict[str, Any]], None]]:
        return self.loader.swap_listeners

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduler and load the preload model (failures are logged, not fatal)."""
        self.queue.start()
        model = self.registry.preload_model if self.settings.preload else None
        if model is None:
            self.loader.start_spare()
            return
        try:
            await self.load(model)
        except ZoeError as exc:
            log.error("preload of %r failed: %s", model, exc.message)
            self.loader.start_spare()

    async def close(self) -> None:
        self.loader.closing = True  # no spare is started while the loop winds down
        await self.queue.close()
        await self.loader.close()

    # --- files and plans ---------------------------------------------------------------------

    def model_file(self, model: str) -> Path:
        return self.loader.model_file(model)

    async def check_loadable(self, model: str) -> str | None:
        """Why ``model`` cannot be loaded right now (missing or corrupt file), or ``None``."""
        try:
            await self.loader.gguf(model)
        except (GGUFError, OSError, ValueError) as exc:
            return str(exc)
        return None

    def budget(self, replacing: bool) -> Budget:
        return self.loader.budget(replacing)

    async def plan_for(self, model: str) -> Plan:
        return await self.loader.plan_for(model)

    def expected_wait(self, model: str) -> float:
        return self.queue.expected_wait(model)

    # --- the public verbs --------------------------------------------------------------------

    async def generate(
        self, model: str, req: GenerationRequest, deadline: float | None = None, priority: Priority = Priority.NORMAL
    ) -> AsyncGenerator[Event, None]:
        """Stream one generation on ``model``, loading or swapping first if needed.

        Raises :class:`ServiceUnavailable` (busy, queue full, too large) or :class:`ModelLoadFailed`
        before the first event; after that, failures arrive as an :class:`ErrorEvent`. Callers
        must close the iterator (``contextlib.aclosing``) so an abandoned request frees the slot.
        ``deadline`` (a route's, or ``X-Zoe-Deadline``) bounds the time until the slot is granted.
        A ``background`` generation may be suspended between two tokens while ``interactive``
        requests run; its stream then just pauses.

        A worker that dies before the first event (killed while idle, loading or reading the
        prompt) costs the request nothing the client can see: it is run once more on a fresh
        worker. A second death is reported, and counts towards the crash-loop limit like the first;
        so is the first when the retry could not start within the deadline (a route then falls back
        on the crash).
        """
        entry = self.registry.models.get(model)
        if entry is not None and not entry.generates:
            raise InvalidRequest(
                f"model {model!r} is an embeddings model (embeddings: true in models.yaml): ask /v1/embeddings "
                "or /api/embed, or name a generative model",
                param="model",
            )
        chars = speeds.prompt_chars(req)
        for attempt in (1, 2):
            control = GenerationControl(on_change=self.queue.wake)
            try:
                ticket, worker = await self._hold(
                    model,
                    deadline,
                    priority,
                    n_ctx=req.n_ctx,
                    prompt_tokens=self._prompt_tokens(model, chars),
                    max_tokens=req.max_tokens,
                    control=control,
                )
            except ServiceUnavailable as exc:
                if attempt == 2 and exc.kind in (Failure.BUSY, Failure.QUEUE_FULL):
                    # the crash is the news: a route falls back on it, not on the wait the retry would need
                    raise ServiceUnavailable(
                        f"the model worker died before answering and a retry would wait too long: {exc.message}",
                        code=Failure.WORKER_CRASHED,
                        retry_after=exc.retry_after or 1,
                    ) from None
                if exc.kind is not Failure.WORKER_CRASHED or attempt == 2:
                    raise
                log.warning("%s; retrying the request once", exc.message)
                continue
            SERVED_CONTEXT.set(ticket.context)
            warm = worker.pid in self._served_by
            self._served_by.add(worker.pid)
            started = time.monotonic()
            crashed = retry = False
            try:
                stream = worker.generate(
                    req,
                    self.settings.stall_timeout_s,
                    self.settings.stream_interval_ms,
                    control if priority is Priority.BACKGROUND else None,
                )
                async with contextlib.aclosing(stream) as events:
                    first = True
                    async for event in events:
                        died = (Failure.WORKER_CRASHED, Failure.WORKER_TIMEOUT)
                        if isinstance(event, ErrorEvent) and event.kind in died:
                            crashed = True
                            self.last_error = event.message
                            # a stall may be the request's own doing and has cost its timeout already
                            retry = first and attempt == 1 and event.kind is Failure.WORKER_CRASHED
                            if retry:
                                break
                        elif isinstance(event, Finish):
                            self._learn(model, chars, event, warm)
                        first = False
                        yield event
            finally:
                control.mark_ended()
                self.queue.release(ticket, time.monotonic() - started, crashed=crashed)
            if not retry:
                return
            # the scheduler must see the process gone before the retry is admitted, or it would be
            # granted the dead worker again
            if await worker.exit_status(2.0) is None:
                await worker.kill()
            log.warning("worker for %r died before answering (%s); retrying the request once", model, self.last_error)

    async def _hold(
        self,
        model: str,
        deadline: float | None,
        priority: Priority,
        *,
        n_ctx: int | None = None,
        prompt_tokens: int = 0,
        max_tokens: int | None = None,
        control: GenerationControl | None = None,
    ) -> tuple[Ticket, WorkerClient]:
        """Admission, the queue and the grant: the slot is the caller's until it releases the ticket."""
        ticket = await self.queue.admit(
            model, deadline, n_ctx, priority=priority, prompt_tokens=prompt_tokens, max_tokens=max_tokens
        )
        ticket.control = control
        worker = await self.queue.await_grant(ticket)
        assert worker is not None
        return ticket, worker

    def _prompt_tokens(self, model: str, chars: int) -> int:
        return speeds.prompt_tokens(self.stats.get(model), chars)

    def _learn(self, model: str, chars: int, finish: Finish, warm: bool) -> None:
        """Measured speeds from a finished generation, for the next admission's prediction."""
        self.queue.speeds[model] = speeds.learn(self.stats[model], chars, finish, warm)
        usage, timings = finish.usage, finish.timings
        if usage.completion_tokens > 1 and timings.predicted_ms > 0:
            self.last_tokens_per_s = timings.per_second(usage)["predicted_per_second"]
        if timings.suspensions:
            self.queue.suspension.paused_ms_total += timings.paused_ms
            self.queue.suspension.cost_ms_total += timings.suspend_cost_ms

    async def embed(
        self,
        model: str,
        texts: list[str],
        deadline: float | None = None,
        *,
        truncate: bool = False,
        priority: Priority = Priority.NORMAL,
    ) -> Embedded:
        """One vector per text from ``model``, through the same admission, queue and swaps as a generation.

        Raises :class:`InvalidRequest` when the registry does not mark ``model`` for embeddings, and what
        :meth:`generate` raises before its first event. A worker that dies during the call is replaced and
        the call runs once more, as a generation that dies before its first token does.
        """
        entry = self.registry.models.get(model)
        if entry is not None and not entry.embeds:
            raise InvalidRequest(
                f"model {model!r} does not serve embeddings: its models.yaml entry needs 'embeddings: true' "
                "(an embeddings model) or 'embeddings: also' (a generative model that also embeds)",
                param="model",
            )
        chars = sum(len(t) for t in texts)
        for attempt in (1, 2):
            ticket, worker = await self._hold(
                model, deadline, priority, prompt_tokens=self._prompt_tokens(model, chars), max_tokens=0
            )
            started = time.monotonic()
            crashed = False
            try:
                return await worker.embed(texts, truncate, self.settings.stall_timeout_s)
            except ServiceUnavailable as exc:
                crashed = exc.kind in (Failure.WORKER_CRASHED, Failure.WORKER_TIMEOUT)
                if crashed:
                    self.last_error = exc.message
                if attempt == 2 or exc.kind is not Failure.WORKER_CRASHED:
                    raise
            finally:
                self.queue.release(ticket, time.monotonic() - started, crashed=crashed)
            # as in generate: the scheduler must see the process gone before the retry is admitted
            if await worker.exit_status(2.0) is None:
                await worker.kill()
            log.warning("worker for %r died while embedding (%s); retrying once", model, self.last_error)
        raise AssertionError("unreachable")

    async def load(self, model: str, n_ctx: int | None = None) -> Plan:
        """Make ``model`` the loaded one (admin API, preload), at ``n_ctx`` if the planner allows; returns its plan."""
        ticket = await self.queue.admit(model, self.settings.load_timeout_s, n_ctx, strict=False)
        await self.queue.await_grant(ticket)
        self.queue.release(ticket, 0.0, count=False)
        assert self.plan is not None
        return self.plan

    async def unload(self) -> str | None:
        """Unload whatever is loaded once in-flight work is done; returns the model that was loaded."""
        was = self.model
        await self.queue.unload()
        return was

    def set_keep_alive(self, model: str, ttl: float | None) -> None:
        """Override a model's idle TTL (``None`` keeps it loaded until told otherwise)."""
        self.queue.set_keep_alive(model, ttl)

    # --- reporting ---------------------------------------------------------------------------

    def queue_by_model(self) -> dict[str, int]:
        return self.queue.queue_by_model()

    def idle_unload_at(self) -> float | None:
        """Seconds until the loaded model unloads for idleness; ``None`` while busy or kept forever."""
        return self.queue.idle_unload_at()

    def status_record(self) -> SupervisorStatus:
        now = time.monotonic()
        loader = self.loader
        worker = loader.worker
        rss = None
        if worker is not None and worker.pid:
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(worker.pid).memory_info().rss // MiB
        profile = device.refresh(self.profile)
        reserve_mb = self.registry.device.reserve_mb
        spare = loader.spare
        slot = SlotStatus(
            state=self.state.value,
            model=self.model,
            since=self.since,
            pid=worker.pid if worker else None,
            worker_rss_mb=rss,
            info=loader.info.model_dump() if loader.info else None,
            n_ctx=loader.loaded_n_ctx(),
            context=loader.last_context,
            plan=loader.plan.as_dict() if loader.plan else None,
            busy_with=self.queue.busy_with,
            idle_unload_in_s=None if (d := self.queue.idle_deadline()) is None else round(d - now, 1),
            spare_worker=spare.pid if spare and spare.alive else None,
            prefix_cache=worker.prefix_cache if worker else None,
        )
        return SupervisorStatus(
            profile=profile.as_dict(),
            memory=MemoryStatus(
                reserve_mb=reserve_mb,
                overhead_mb=self.registry.device.overhead_mb,
                usable_mb=max(0, profile.available_bytes // MiB - reserve_mb),
            ),
            slot=slot,
            queue_length=len(self.queue.waiting),
            queue_by_model=self.queue_by_model(),
            queue_by_priority=self.queue.queue_by_priority(),
            scheduling=self.scheduling(now),
            swaps=list(loader.swaps),
            failures=dict(loader.failures),
            models=dict(loader.stats),
            last_error=loader.last_error,
            now=now,
        )

    def scheduling(self, now: float) -> dict[str, Any]:
        """Who holds the slot and at what priority, what is suspended, and how good the wait predictions are."""
        queue = self.queue

        def held(ticket: Ticket | None, since: float | None) -> dict[str, Any] | None:
            if ticket is None:
                return None
            return {
                "model": ticket.model,
                "priority": ticket.priority.value,
                "for_s": None if since is None else round(now - since, 3),
            }

        holder, paused = queue.holder, queue.suspended
        serving = held(holder, holder.granted_at if holder else None)
        running = queue.running()
        if serving is not None and running is not None:
            # what admission assumes is left of it (0: it has outlived its prediction)
            speed = queue.speeds.get(running.model)
            left = scheduler.service_s(running, speed) - (now - running.started_at)
            serving["predicted_left_s"] = round(max(0.0, left), 3)
            serving["suspendable"] = running.suspendable
        return {
            "serving": serving,
            "suspended": held(paused, paused.paused_since if paused else None),
            "suspension": queue.suspension.as_dict(),
            "prediction": queue.predictions.as_dict(),
            "starvation_s": self.admission.starvation,
            "suspend": self.admission.suspend,
        }

    def status(self) -> dict[str, Any]:
        """The supervisor's part of ``/admin/status`` (also what the metrics and the dashboard read)."""
        return self.status_record().as_dict()

    @property
    def loaded(self) -> str | None:
        return self.model if self.loader.worker is not None else None

    @property
    def loaded_n_ctx(self) -> int | None:
        """The context the loaded model runs at (it can be above the registry's after a num_ctx resize)."""
        return self.loader.loaded_n_ctx()
