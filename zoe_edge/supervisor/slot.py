"""The single model slot: one worker process, one loaded model, one generation at a time.

The slot carries out decisions made elsewhere (:mod:`.planner` says whether a model fits,
:mod:`.scheduler` says who goes next and how long a newcomer would wait). One task, the
scheduler loop, owns every load, swap and unload, so a client that disconnects mid-load cannot
leave the slot half swapped. Requests hold the slot only while they stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import enum
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest
from zoe_edge.config import Settings
from zoe_edge.errors import Failure, ModelLoadFailed, ServiceUnavailable, WorkerFailed, ZoeError
from zoe_edge.gguf_info import GGUFError, GGUFInfo, GGUFMissing, read_gguf
from zoe_edge.registry import ModelEntry, Registry, ensure_model_file
from zoe_edge.supervisor import device, scheduler
from zoe_edge.supervisor.planner import Budget, ContextDecision, Plan, choose_context, plan_entry
from zoe_edge.worker.client import WorkerProcess, describe_exit
from zoe_edge.worker.protocol import LoadSpec, ModelInfo

log = logging.getLogger("zoe_edge.supervisor")

MiB = device.MiB
CRASH_WINDOW_S = 60.0
MEMORY_CHECK_S = 5.0

# The context decision for the generation this task is streaming, set by Supervisor.generate once the
# slot is granted (the API handler iterates the stream in its own task, so it sees the value); the
# fronts turn it into x-zoe-context headers. None: no local generation was started in this context.
SERVED_CONTEXT: contextvars.ContextVar[ContextDecision | None] = contextvars.ContextVar(
    "zoe_served_context", default=None
)


class SlotState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    BUSY = "busy"
    UNLOADING = "unloading"
    FAILED = "failed"


class ModelTooLarge(ServiceUnavailable):
    code = "model_too_large"


def default_threads() -> int:
    """Physical cores: llama.cpp gains nothing from SMT siblings and loses to contention."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def load_spec(
    name: str,
    entry: ModelEntry,
    path: Path,
    gpu_layers: int,
    prefix_cache_bytes: int = 0,
    n_ctx: int | None = None,
) -> LoadSpec:
    ctx = entry.n_ctx if n_ctx is None else n_ctx
    return LoadSpec(
        name=name,
        path=str(path),
        n_ctx=ctx,
        n_batch=min(entry.n_batch, ctx),
        n_threads=entry.n_threads or default_threads(),
        n_gpu_layers=gpu_layers,
        chat_format=entry.chat_format,
        kv_cache_type=entry.kv_cache_type,
        tool_format=entry.tool_format,
        prefix_cache_bytes=prefix_cache_bytes,
    )


def file_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


@dataclass
class LoadFailure:
    reason: str
    count: int
    retry_at: float
    signature: tuple[int, int] | None


@dataclass
class _Ticket:
    model: str | None  # None: an unload request
    enqueued_at: float
    granted: asyncio.Future[WorkerProcess | None]
    n_ctx: int | None = None  # the context the request asks for
    context: ContextDecision | None = None  # what the scheduler decided for it, set before the grant


@dataclass
class ModelStats:
    requests: int = 0
    service_s: float | None = None
    load_s: float | None = None
    crashes: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=10))


class Supervisor:
    def __init__(self, registry: Registry, registry_dir: Path, settings: Settings) -> None:
        self.registry = registry
        self.registry_dir = registry_dir
        self.settings = settings
        self.admission = registry.admission
        self.profile = device.detect(settings.profile or registry.device.profile)
        self.state = SlotState.UNLOADED
        self.model: str | None = None
        self.since = time.time()
        self.info: ModelInfo | None = None
        self.plan: Plan | None = None
        self.last_error: str | None = None
        self.swaps: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        # called with each swap record as it happens (the metrics count loads and their durations)
        self.swap_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.failures: dict[str, LoadFailure] = {}
        self.stats: dict[str, ModelStats] = collections.defaultdict(ModelStats)
        self._worker: WorkerProcess | None = None
        self._spare: WorkerProcess | None = None
        self._queue: list[_Ticket] = []
        self._busy_with: str | None = None
        self._loaded_since = time.monotonic()
        self._last_used = time.monotonic()
        self._ttl_override: dict[str, float | None] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._spare_task: asyncio.Task[None] | None = None
        self._closing = False
        self.last_tokens_per_s: float | None = None
        # the latest context decision (any model), for /admin/status
        self.last_context: dict[str, Any] | None = None
        self._resized_at: dict[str, float] = {}  # monotonic time of each model's last context resize

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduler and load the preload model (failures are logged, not fatal)."""
        self._loop_task = asyncio.create_task(self._run(), name="zoe-slot")
        model = self.registry.preload_model if self.settings.preload else None
        if model is None:
            self._start_spare()
            return
        try:
            await self.load(model)
        except ZoeError as exc:
            log.error("preload of %r failed: %s", model, exc.message)
            self._start_spare()

    async def close(self) -> None:
        self._closing = True
        for ticket in self._queue:
            if not ticket.granted.done():
                ticket.granted.set_exception(ServiceUnavailable("zoe-edge is shutting down", retry_after=5))
        self._queue.clear()
        if self._loop_task is not None:
            # the loop also stops on its own once it sees _closing: on Python 3.11 asyncio.wait_for can swallow
            # a cancellation that lands as its inner wait completes, and a loop left running would hang close()
            self._wake.set()
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._spare_task is not None:
            self._spare_task.cancel()
            await asyncio.gather(self._spare_task, return_exceptions=True)
        await self._stop_worker("shutdown")
        if self._spare is not None:
            await self._spare.stop()
            self._spare = None

    # --- files and plans ---------------------------------------------------------------------

    def model_file(self, model: str) -> Path:
        return ensure_model_file(self.registry.models[model], self.registry_dir, self.settings.state_dir)

    async def check_loadable(self, model: str) -> str | None:
        """Why ``model`` cannot be loaded right now (missing or corrupt file), or ``None``."""
        try:
            await self._gguf(model)
        except (GGUFError, OSError, ValueError) as exc:
            return str(exc)
        return None

    async def _gguf(self, model: str) -> GGUFInfo:
        path = await asyncio.to_thread(self.model_file, model)
        return await asyncio.to_thread(read_gguf, path)

    def budget(self, replacing: bool) -> Budget:
        profile = device.refresh(self.profile)
        reclaim = 0
        if replacing and not profile.simulated and self._worker is not None and self._worker.pid:
            with contextlib.suppress(psutil.Error):
                reclaim = psutil.Process(self._worker.pid).memory_info().rss
        return Budget.from_settings(profile, self.registry.device, reclaim)

    async def plan_for(self, model: str) -> Plan:
        info = await self._gguf(model)
        replacing = self.model is not None and self.model != model
        return plan_entry(model, self.registry.models[model], info, self.budget(replacing))

    # --- admission ---------------------------------------------------------------------------

    def _check_failure(self, model: str) -> None:
        failure = self.failures.get(model)
        if failure is None:
            return
        now = time.monotonic()
        try:
            signature = file_signature(self.model_file(model))
        except (OSError, ValueError):
            signature = None
        if failure.signature != signature:
            log.info("file of %r changed since it failed; trying again", model)
            del self.failures[model]
            return
        if now < failure.retry_at:
            raise ModelLoadFailed(
                f"model {model!r} failed to load ({failure.reason}); next attempt in {failure.retry_at - now:.0f} s",
                retry_after=failure.retry_at - now,
            )

    def expected_wait(self, model: str) -> float:
        return scheduler.expected_wait(
            [scheduler.Waiting(t.model, t.enqueued_at) for t in self._queue if t.model],
            busy_with=self._busy_with,
            loaded=self.model,
            target=model,
            service_s={m: s.service_s for m, s in self.stats.items() if s.service_s is not None},
            load_s={m: s.load_s for m, s in self.stats.items() if s.load_s is not None},
        )

    async def _admit(self, model: str, deadline: float | None, n_ctx: int | None = None) -> _Ticket:
        if self._closing:
            raise ServiceUnavailable("zoe-edge is shutting down", retry_after=5)
        self._check_failure(model)
        if model != self.model or self._worker is None:
            try:
                plan = await self.plan_for(model)
            except (GGUFError, OSError, ValueError) as exc:
                self._record_failure(model, str(exc))
                code = "model_missing" if isinstance(exc, GGUFMissing) else "model_load_failed"
                raise ModelLoadFailed(f"model {model!r} cannot be loaded: {exc}", code=code, retry_after=10) from None
            if not plan.fits:
                raise ModelTooLarge(f"model {model!r} {plan.reason}", retry_after=60)
        if len(self._queue) >= self.admission.max_queue:
            raise ServiceUnavailable(
                f"the local model is busy: {len(self._queue)} requests are queued (limit {self.admission.max_queue})",
                code="queue_full",
                retry_after=self.expected_wait(model),
            )
        limit = self.admission.deadline if deadline is None else deadline
        wait = self.expected_wait(model)
        if wait > limit:
            raise ServiceUnavailable(
                f"the local model is busy: expected wait {wait:.1f} s exceeds the {limit:.1f} s deadline",
                code="busy",
                retry_after=wait,
            )
        ticket = _Ticket(model, time.monotonic(), asyncio.get_running_loop().create_future(), n_ctx)
        self._queue.append(ticket)
        self._wake.set()
        return ticket

    async def _await_grant(self, ticket: _Ticket, deadline: float | None) -> WorkerProcess | None:
        limit = (self.admission.deadline if deadline is None else deadline) + self.settings.load_timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.granted), limit)
        except asyncio.TimeoutError:
            self._withdraw(ticket)
            raise ServiceUnavailable(
                f"the local model did not become free within {limit:.0f} s", code="busy", retry_after=limit
            ) from None
        except asyncio.CancelledError:
            self._withdraw(ticket)
            raise

    def _withdraw(self, ticket: _Ticket) -> None:
        """A waiter gave up: drop its ticket, or hand the slot back if it was granted meanwhile."""
        if ticket in self._queue:
            self._queue.remove(ticket)
        if ticket.granted.done() and not ticket.granted.cancelled() and ticket.granted.exception() is None:
            self._release(ticket.model, 0.0, count=False)
        elif not ticket.granted.done():
            ticket.granted.cancel()

    # --- the public verbs --------------------------------------------------------------------

    async def generate(
        self, model: str, req: GenerationRequest, deadline: float | None = None
    ) -> AsyncGenerator[Event, None]:
        """Stream one generation on ``model``, loading or swapping first if needed.

        Raises :class:`ServiceUnavailable` (busy, queue full, too large) or :class:`ModelLoadFailed`
        before the first event; after that, failures arrive as an :class:`ErrorEvent`. Callers
        must close the iterator (``contextlib.aclosing``) so an abandoned request frees the slot.

        A worker that dies before the first event (killed while idle, loading or reading the
        prompt) costs the request nothing the client can see: it is run once more on a fresh
        worker. A second death is reported, and counts towards the crash-loop limit like the first;
        so is the first when the retry could not start within the deadline (a route then falls back
        on the crash).
        """
        for attempt in (1, 2):
            try:
                ticket = await self._admit(model, deadline, req.n_ctx)
                worker = await self._await_grant(ticket, deadline)
            except ServiceUnavailable as exc:
                if attempt == 2 and exc.kind in (Failure.BUSY, Failure.QUEUE_FULL):
                    # the crash is the news: a route falls back on it, not on the wait the retry would need
                    raise ServiceUnavailable(
                        f"the model worker died before answering and a retry would wait too long: {exc.message}",
                        code="worker_crashed",
                        retry_after=exc.retry_after or 1,
                    ) from None
                if exc.kind is not Failure.WORKER_CRASHED or attempt == 2:
                    raise
                log.warning("%s; retrying the request once", exc.message)
                continue
            assert worker is not None
            SERVED_CONTEXT.set(ticket.context)
            started = time.monotonic()
            crashed = retry = False
            try:
                stream = worker.generate(req, self.settings.stall_timeout_s, self.settings.stream_interval_ms)
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
                        elif isinstance(event, Finish) and event.usage.completion_tokens > 1:
                            self.last_tokens_per_s = event.timings.per_second(event.usage)["predicted_per_second"]
                        first = False
                        yield event
            finally:
                self._release(model, time.monotonic() - started, crashed=crashed)
            if not retry:
                return
            # the scheduler must see the process gone before the retry is admitted, or it would be
            # granted the dead worker again
            if await worker.exit_status(2.0) is None:
                await worker.kill()
            log.warning("worker for %r died before answering (%s); retrying the request once", model, self.last_error)

    async def load(self, model: str, n_ctx: int | None = None) -> Plan:
        """Make ``model`` the loaded one (admin API, preload), at ``n_ctx`` if the planner allows; returns its plan."""
        ticket = await self._admit(model, self.settings.load_timeout_s, n_ctx)
        await self._await_grant(ticket, self.settings.load_timeout_s)
        self._release(model, 0.0, count=False)
        assert self.plan is not None
        return self.plan

    async def unload(self) -> str | None:
        """Unload whatever is loaded once in-flight work is done; returns the model that was loaded."""
        was = self.model
        ticket = _Ticket(None, time.monotonic(), asyncio.get_running_loop().create_future())
        self._queue.append(ticket)
        self._wake.set()
        await ticket.granted
        return was

    def set_keep_alive(self, model: str, ttl: float | None) -> None:
        """Override a model's idle TTL (``None`` keeps it loaded until told otherwise)."""
        self._ttl_override[model] = ttl
        self._wake.set()

    def _release(self, model: str | None, elapsed: float, *, crashed: bool = False, count: bool = True) -> None:
        if model is not None and count:
            stats = self.stats[model]
            stats.requests += 1
            stats.service_s = scheduler.ewma(stats.service_s, elapsed)
        if crashed and model is not None:
            self.stats[model].crashes.append(time.monotonic())
        self._busy_with = None
        self._last_used = time.monotonic()
        if self.state == SlotState.BUSY:
            self.state = SlotState.READY
        self._wake.set()

    # --- the scheduler loop (the only code that loads and unloads) -----------------------------

    def _ttl(self, model: str) -> float | None:
        if model in self._ttl_override:
            return self._ttl_override[model]
        return self.registry.models[model].ttl

    def idle_unload_at(self) -> float | None:
        """Seconds until the loaded model unloads for idleness; ``None`` while busy or kept forever."""
        deadline = self._idle_deadline()
        return None if deadline is None else deadline - time.monotonic()

    def _idle_deadline(self) -> float | None:
        if self.model is None or self._busy_with is not None or self._queue:
            return None
        ttl = self._ttl(self.model)
        return None if ttl is None else self._last_used + ttl

    async def _run(self) -> None:
        while not self._closing:
            deadline = self._idle_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._worker is not None and not self.profile.simulated:
                # the rest of the house may take memory at any time: look again every few seconds
                timeout = MEMORY_CHECK_S if timeout is None else min(timeout, MEMORY_CHECK_S)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._closing:
                return
            try:
                await self._step()
            except Exception:  # the loop must survive anything one step does
                log.exception("scheduler step failed")

    async def _step(self) -> None:
        if self._worker is not None and not self._worker.alive and self._busy_with is None:
            await self._worker_died()
        deadline = self._idle_deadline()
        if deadline is not None and time.monotonic() >= deadline:
            await self._stop_worker(f"idle for {self._ttl(self.model or ''):.0f} s (ttl)")
            return
        if self._worker is not None and not self.profile.simulated:
            idle = self._busy_with is None and not self._queue
            available = device.refresh(self.profile).available_bytes
            pressure = scheduler.memory_pressure(available, self.registry.device.reserve_mb * MiB, idle)
            if pressure is not None:
                log.warning("unloading %r: %s", self.model, pressure)
                self.last_error = pressure
                await self._stop_worker(pressure)
                return
        while self._busy_with is None and self._queue:
            if self._queue[0].model is None or all(t.model is None for t in self._queue):
                unload = next(t for t in self._queue if t.model is None)
                self._queue.remove(unload)
                await self._stop_worker("requested")
                if not unload.granted.done():
                    unload.granted.set_result(None)
                continue
            pending = [t for t in self._queue if t.model is not None]
            choice = scheduler.choose_next(
                [scheduler.Waiting(t.model or "", t.enqueued_at) for t in pending],
                self.model if self._worker is not None else None,
                self._loaded_since,
                time.monotonic(),
                self.admission.min_residency,
            )
            if choice is None:
                return
            ticket = pending[choice.index]
            self._queue.remove(ticket)
            if ticket.granted.done():  # the client gave up while queued
                continue
            assert ticket.model is not None
            try:
                worker, ticket.context = await self._ensure_loaded(ticket.model, choice.reason, ticket.n_ctx)
            except ZoeError as exc:
                self._fail_waiting(ticket, exc)
                continue
            if ticket.granted.done():
                continue
            self._busy_with = ticket.model
            self.state = SlotState.BUSY
            ticket.granted.set_result(worker)

    def _fail_waiting(self, ticket: _Ticket, exc: ZoeError) -> None:
        """A load failed: its requester and everyone queued for the same model get the error."""
        for t in [ticket, *[t for t in self._queue if t.model == ticket.model]]:
            if t in self._queue:
                self._queue.remove(t)
            if not t.granted.done():
                t.granted.set_exception(exc)

    def _crash_looping(self, model: str) -> bool:
        recent = [t for t in self.stats[model].crashes if time.monotonic() - t < CRASH_WINDOW_S]
        return len(recent) + 1 >= self.settings.crash_loop_limit

    async def _worker_died(self) -> None:
        worker = self._worker
        assert worker is not None
        model = self.model or "?"
        log.error("worker for %r (pid %s) %s", model, worker.pid, "died")
        stats = self.stats[model]
        recent = [t for t in stats.crashes if time.monotonic() - t < CRASH_WINDOW_S]
        await self._stop_worker("worker died")
        if len(recent) >= self.settings.crash_loop_limit:
            self._record_failure(model, f"worker crashed {len(recent)} times in {CRASH_WINDOW_S:.0f} s")

    def _loaded_n_ctx(self) -> int | None:
        """The context the loaded model runs at (what llama.cpp reports), ``None`` when none is loaded."""
        if self._worker is None:
            return None
        if self.info is not None:
            return self.info.n_ctx
        return self.plan.n_ctx if self.plan is not None and self.plan.n_ctx else None

    def _note_context(self, model: str, decision: ContextDecision) -> None:
        self.last_context = {"model": model, "at": time.time(), **decision.as_dict()}
        if decision.reload or (decision.requested or 0) > decision.n_ctx:
            log.info("context for %r: %s", model, decision.reason)
        else:
            log.debug("context for %r: %s", model, decision.reason)

    async def _ensure_loaded(
        self, model: str, why: str, requested: int | None = None
    ) -> tuple[WorkerProcess, ContextDecision]:
        """The worker for ``model`` at the context the request needs: loaded, swapped in or resized.

        A resize is a planned reload like a swap; it runs here, in the scheduler loop, so it
        waits for the in-flight generation like any swap does.
        """
        if self._worker is not None and not self._worker.alive:
            await self._worker_died()
        entry = self.registry.models[model]
        resident = self._worker is not None and self.model == model
        current = self._loaded_n_ctx() if resident else None
        if not resident:
            self._check_failure(model)
        plans: dict[int, Plan] = {}
        n_ctx_train = 0

        def plan_at(n_ctx: int) -> Plan:
            if n_ctx not in plans:
                plans[n_ctx] = plan_entry(model, entry, gguf, budget, n_ctx)
            return plans[n_ctx]

        if not resident or (requested or 0) > (current or 0):
            try:
                gguf = await self._gguf(model)
            except (GGUFError, OSError, ValueError) as exc:
                if not resident:  # as _admit would have said, had the file broken before the request came
                    self._record_failure(model, str(exc))
                    code = "model_missing" if isinstance(exc, GGUFMissing) else "model_load_failed"
                    raise ModelLoadFailed(
                        f"model {model!r} cannot be loaded: {exc}", code=code, retry_after=10
                    ) from None
                decision = ContextDecision(
                    current or entry.n_ctx, False, f"num_ctx {requested}: the GGUF cannot be read ({exc})", requested
                )
                self._note_context(model, decision)
                assert self._worker is not None
                return self._worker, decision
            n_ctx_train = gguf.context_length
            # a swap gives back the other model's memory, a resize this one's
            budget = self.budget(replacing=self._worker is not None)
        decision = choose_context(
            requested,
            current,
            entry.n_ctx,
            n_ctx_train,
            plan_at,
            last_resize_at=self._resized_at.get(model),
            now=time.monotonic(),
            min_interval=self.admission.min_residency,
        )
        self._note_context(model, decision)
        if resident and not decision.reload:
            assert self._worker is not None
            return self._worker, decision
        plan = plan_at(decision.n_ctx)
        if not plan.fits:
            raise ModelTooLarge(f"model {model!r} {plan.reason}", retry_after=60)
        if not resident:
            return await self._load(model, plan, why), decision
        self._resized_at[model] = time.monotonic()
        try:
            worker = await self._load(model, plan, f"context {current} -> {decision.n_ctx} ({decision.reason})")
        except (ModelLoadFailed, ServiceUnavailable) as exc:
            # the model served at the old context a moment ago: go back to it rather than fail the request
            assert current is not None
            self.failures.pop(model, None)
            decision = ContextDecision(
                current, False, f"resize to {decision.n_ctx} failed ({exc.message}); reloaded at {current}", requested
            )
            log.error("context for %r: %s", model, decision.reason)
            self._note_context(model, decision)
            worker = await self._load(model, plan_at(current), decision.reason)
        return worker, decision

    async def _load(self, model: str, plan: Plan, why: str) -> WorkerProcess:
        """Stop whatever runs and load ``model`` as ``plan`` says (its GPU layers and context)."""
        previous = self.model
        started = time.monotonic()
        await self._stop_worker(f"context resize of {model!r}" if previous == model else f"swap to {model!r}")
        self.state, self.model, self.since, self.plan = SlotState.LOADING, model, time.time(), plan
        path = self.model_file(model)
        spec = load_spec(
            model, self.registry.models[model], path, plan.gpu_layers, plan.prefix_cache_bytes, plan.n_ctx or None
        )
        try:
            worker = await self._take_spare(model)
        except BaseException:
            self.state, self.model = SlotState.UNLOADED, None
            raise
        try:
            if worker.pid is None:  # no spare was ready
                await worker.start()
            info = await worker.load(spec, self.settings.load_timeout_s)
        except (ModelLoadFailed, WorkerFailed) as exc:
            returncode = await worker.exit_status(0.2)
            await worker.stop()
            if returncode is not None and returncode < 0 and not self._crash_looping(model):
                # killed by a signal while starting or loading (an operator, the OOM killer): no verdict on
                # the file yet, so no back-off; this client hears 503 and the next request loads afresh. A
                # model that keeps dying this way reaches the crash-loop limit and backs off like any failed load.
                self.stats[model].crashes.append(time.monotonic())
                self.state, self.model = SlotState.UNLOADED, None
                self._start_spare()
                log.error("worker for %r %s while loading; not backing off", model, describe_exit(returncode))
                raise ServiceUnavailable(
                    f"the model worker {describe_exit(returncode)} while loading {model!r}; retry",
                    code="worker_crashed",
                    retry_after=1,
                ) from None
            self._record_failure(model, exc.message)
            self._start_spare()
            raise ModelLoadFailed(exc.message, retry_after=self.failures[model].retry_at - time.monotonic()) from None
        except BaseException:
            await worker.stop()
            self.state, self.model = SlotState.UNLOADED, None
            raise
        duration = time.monotonic() - started
        self._worker, self.info, self.state = worker, info, SlotState.READY
        self._loaded_since = self._last_used = time.monotonic()
        self.failures.pop(model, None)
        stats = self.stats[model]
        stats.load_s = duration
        swap: dict[str, Any] = {
            "at": time.time(),
            "from": previous,
            "to": model,
            "duration_ms": round(duration * 1000, 1),
            "llama_load_ms": info.load_ms,
            "gpu_layers": plan.gpu_layers,
            "n_ctx": info.n_ctx,
            "resize": previous == model,
            "reason": why,
        }
        self.swaps.append(swap)
        for listener in self.swap_listeners:
            listener(swap)
        log.info(
            "loaded %r in %.0f ms (llama.cpp %.0f ms, pid %d, %d GPU layers, n_ctx %d; %s)",
            model,
            duration * 1000,
            info.load_ms,
            info.pid,
            plan.gpu_layers,
            info.n_ctx,
            why,
        )
        self._start_spare()
        return worker

    def _record_failure(self, model: str, reason: str) -> None:
        previous = self.failures.get(model)
        count = previous.count + 1 if previous else 1
        delay = scheduler.backoff_s(count)
        try:
            signature = file_signature(self.model_file(model))
        except (OSError, ValueError):
            signature = None
        self.failures[model] = LoadFailure(reason, count, time.monotonic() + delay, signature)
        self.last_error = reason
        if self.model == model or self.model is None:
            self.state, self.model = SlotState.FAILED, model
        log.error("model %r failed (%d in a row, next attempt in %.0f s): %s", model, count, delay, reason)

    async def _stop_worker(self, why: str) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        log.info("unloading %r (%s)", self.model, why)
        self.state = SlotState.UNLOADING
        await worker.stop()
        self.state, self.model, self.info, self.plan, self.since = SlotState.UNLOADED, None, None, None, time.time()

    # --- the spare worker: process start-up off the swap's critical path ------------------------

    def _start_spare(self) -> None:
        if not self.admission.spare_worker or self._closing or self._spare is not None:
            return
        if self._spare_task is not None and not self._spare_task.done():
            return
        self._spare_task = asyncio.create_task(self._spawn_spare(), name="zoe-spare-worker")

    async def _spawn_spare(self) -> None:
        spare = WorkerProcess(label="worker:spare")
        try:
            await spare.start()
        except (WorkerFailed, OSError) as exc:
            log.warning("could not start a spare worker: %s", exc)
            await spare.stop()
            return
        self._spare = spare

    async def _take_spare(self, model: str) -> WorkerProcess:
        """The pre-spawned worker when it is alive, else a new one for the caller to start."""
        if self._spare_task is not None and not self._spare_task.done():
            await asyncio.gather(self._spare_task, return_exceptions=True)
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive:
            spare.label = f"worker:{model}"
            return spare
        if spare is not None:
            await spare.stop()
        # not started here: a start that fails is a failed load, judged by the load's own rules
        return WorkerProcess(label=f"worker:{model}")

    # --- reporting ---------------------------------------------------------------------------

    def queue_by_model(self) -> dict[str, int]:
        return dict(collections.Counter(t.model for t in self._queue if t.model))

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        worker = self._worker
        rss = None
        if worker is not None and worker.pid:
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(worker.pid).memory_info().rss // MiB
        profile = device.refresh(self.profile)
        return {
            "profile": profile.as_dict(),
            "memory": {
                "reserve_mb": self.registry.device.reserve_mb,
                "overhead_mb": self.registry.device.overhead_mb,
                "usable_mb": max(0, profile.available_bytes // MiB - self.registry.device.reserve_mb),
            },
            "slot": {
                "state": self.state.value,
                "model": self.model,
                "since": self.since,
                "pid": worker.pid if worker else None,
                "worker_rss_mb": rss,
                "info": self.info.model_dump() if self.info else None,
                "n_ctx": self._loaded_n_ctx(),
                "context": self.last_context,
                "plan": self.plan.as_dict() if self.plan else None,
                "busy_with": self._busy_with,
                "idle_unload_in_s": None if (d := self._idle_deadline()) is None else round(d - now, 1),
                "spare_worker": self._spare.pid if self._spare and self._spare.alive else None,
                "prefix_cache": worker.prefix_cache if worker else None,
            },
            "queue": {"length": len(self._queue), "by_model": self.queue_by_model()},
            "swaps": list(self.swaps),
            "failures": {
                m: {"reason": f.reason, "count": f.count, "retry_in_s": round(max(0.0, f.retry_at - now), 1)}
                for m, f in self.failures.items()
            },
            "models": {
                m: {
                    "requests": s.requests,
                    "mean_request_s": None if s.service_s is None else round(s.service_s, 3),
                    "load_s": None if s.load_s is None else round(s.load_s, 3),
                }
                for m, s in self.stats.items()
            },
            "last_error": self.last_error,
        }

    @property
    def loaded(self) -> str | None:
        return self.model if self._worker is not None else None

    @property
    def loaded_n_ctx(self) -> int | None:
        """The context the loaded model runs at (it can be above the registry's after a num_ctx resize)."""
        return self._loaded_n_ctx()
