"""What occupies the slot: the worker, its model, and the loads, swaps, resizes and unloads that change it.

:class:`Loader` owns the state table (:class:`~zoe_edge.supervisor.state.SlotMachine`), the
worker and the records of past loads. It decides nothing about who goes next: the supervisor's
scheduler loop calls its verbs, one at a time, so two loads never overlap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from zoe_edge.config import Settings
from zoe_edge.errors import Failure, ModelLoadFailed, ServiceUnavailable, WorkerFailed
from zoe_edge.gguf_info import GGUFError, GGUFInfo, GGUFMissing, read_gguf
from zoe_edge.registry import ModelEntry, Registry, ensure_model_file
from zoe_edge.supervisor import device, scheduler
from zoe_edge.supervisor.planner import Budget, ContextDecision, Plan, choose_context, plan_entry
from zoe_edge.supervisor.records import LoadFailure, ModelStats, SwapRecord
from zoe_edge.supervisor.state import SlotMachine, SlotState
from zoe_edge.supervisor.workers import WorkerClient, WorkerFactory, spawn_process
from zoe_edge.worker.client import describe_exit
from zoe_edge.worker.protocol import LoadSpec, ModelInfo

log = logging.getLogger("zoe_edge.supervisor")

CRASH_WINDOW_S = 60.0


class ModelTooLarge(ServiceUnavailable):
    code = Failure.MODEL_TOO_LARGE.value


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
    suspend_bytes: int = 0,
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
        suspend_bytes=suspend_bytes,
        embeddings="only" if entry.embeddings is True else "also" if entry.embeddings else "none",
        pooling=entry.pooling,
    )


def file_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def unreadable(model: str, exc: Exception) -> ModelLoadFailed:
    """The error for a model whose file is missing or is no GGUF."""
    kind = Failure.MODEL_MISSING if isinstance(exc, GGUFMissing) else Failure.MODEL_LOAD_FAILED
    return ModelLoadFailed(f"model {model!r} cannot be loaded: {exc}", code=kind, retry_after=10)


class Loader:
    def __init__(
        self,
        registry: Registry,
        registry_dir: Path,
        settings: Settings,
        profile: device.DeviceProfile,
        worker_factory: WorkerFactory | None = None,
    ) -> None:
        self.registry = registry
        self.registry_dir = registry_dir
        self.settings = settings
        self.profile = profile
        self.admission = registry.admission
        self.new_worker: WorkerFactory = worker_factory or spawn_process
        self.machine = SlotMachine()
        self.worker: WorkerClient | None = None
        self.spare: WorkerClient | None = None
        self.spare_task: asyncio.Task[None] | None = None
        self.closing = False
        self.info: ModelInfo | None = None
        self.plan: Plan | None = None
        self.last_error: str | None = None
        self.swaps: collections.deque[SwapRecord] = collections.deque(maxlen=50)
        # called with each swap record as it happens (the metrics count loads and their durations)
        self.swap_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.failures: dict[str, LoadFailure] = {}
        self.stats: dict[str, ModelStats] = collections.defaultdict(ModelStats)
        self.loaded_since = time.monotonic()
        self.last_used = time.monotonic()
        # the latest context decision (any model), for /admin/status
        self.last_context: dict[str, Any] | None = None
        self.resized_at: dict[str, float] = {}  # monotonic time of each model's last context resize

    @property
    def state(self) -> SlotState:
        return self.machine.state

    @property
    def model(self) -> str | None:
        return self.machine.model

    # --- files and plans ---------------------------------------------------------------------

    def model_file(self, model: str) -> Path:
        return ensure_model_file(self.registry.models[model], self.registry_dir, self.settings.state_dir)

    async def gguf(self, model: str) -> GGUFInfo:
        path = await asyncio.to_thread(self.model_file, model)
        return await asyncio.to_thread(read_gguf, path)

    def budget(self, replacing: bool) -> Budget:
        profile = device.refresh(self.profile)
        reclaim = 0
        if replacing and not profile.simulated and self.worker is not None and self.worker.pid:
            with contextlib.suppress(psutil.Error):
                reclaim = psutil.Process(self.worker.pid).memory_info().rss
        return Budget.from_settings(profile, self.registry.device, reclaim)

    async def plan_for(self, model: str) -> Plan:
        info = await self.gguf(model)
        replacing = self.model is not None and self.model != model
        return plan_entry(model, self.registry.models[model], info, self.budget(replacing))

    def loaded_n_ctx(self) -> int | None:
        """The context the loaded model runs at (what llama.cpp reports), ``None`` when none is loaded."""
        if self.worker is None:
            return None
        if self.info is not None:
            return self.info.n_ctx
        return self.plan.n_ctx if self.plan is not None and self.plan.n_ctx else None

    # --- failures and their back-off -----------------------------------------------------------

    def check_failure(self, model: str) -> None:
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
                code=Failure.MODEL_LOAD_FAILED,
                retry_after=failure.retry_at - now,
            )

    def record_failure(self, model: str, reason: str) -> None:
        previous = self.failures.get(model)
        count = previous.count + 1 if previous else 1
        delay = scheduler.backoff_s(count)
        try:
            signature = file_signature(self.model_file(model))
        except (OSError, ValueError):
            signature = None
        self.failures[model] = LoadFailure(reason, count, time.monotonic() + delay, signature)
        self.last_error = reason
        # only an idle slot shows the failure: one that is loading, serving or unloading has news of
        # its own, and a failing load marks itself (see load)
        if self.state in (SlotState.UNLOADED, SlotState.FAILED) and self.model in (model, None):
            self.machine.move(SlotState.FAILED, reason, model=model)
        log.error("model %r failed (%d in a row, next attempt in %.0f s): %s", model, count, delay, reason)

    def crash_looping(self, model: str) -> bool:
        recent = [t for t in self.stats[model].crashes if time.monotonic() - t < CRASH_WINDOW_S]
        return len(recent) + 1 >= self.settings.crash_loop_limit

    async def worker_died(self) -> None:
        worker = self.worker
        assert worker is not None
        model = self.model or "?"
        log.error("worker for %r (pid %s) %s", model, worker.pid, "died")
        stats = self.stats[model]
        recent = [t for t in stats.crashes if time.monotonic() - t < CRASH_WINDOW_S]
        await self.stop_worker("worker died")
        if len(recent) >= self.settings.crash_loop_limit:
            self.record_failure(model, f"worker crashed {len(recent)} times in {CRASH_WINDOW_S:.0f} s")

    # --- loading, swapping, resizing -------------------------------------------------------------

    def note_context(self, model: str, decision: ContextDecision) -> None:
        self.last_context = {"model": model, "at": time.time(), **decision.as_dict()}
        if decision.reload or (decision.requested or 0) > decision.n_ctx:
            log.info("context for %r: %s", model, decision.reason)
        else:
            log.debug("context for %r: %s", model, decision.reason)

    async def ensure_loaded(
        self, model: str, why: str, requested: int | None = None
    ) -> tuple[WorkerClient, ContextDecision]:
        """The worker for ``model`` at the context the request needs: loaded, swapped in or resized.

        A resize is a planned reload like a swap; it runs here, in the scheduler loop, so it
        waits for the in-flight generation like any swap does.
        """
        if self.worker is not None and not self.worker.alive:
            await self.worker_died()
        entry = self.registry.models[model]
        resident = self.worker is not None and self.model == model
        current = self.loaded_n_ctx() if resident else None
        if not resident:
            self.check_failure(model)
        plans: dict[int, Plan] = {}
        n_ctx_train = 0

        def plan_at(n_ctx: int) -> Plan:
            if n_ctx not in plans:
                plans[n_ctx] = plan_entry(model, entry, gguf, budget, n_ctx)
            return plans[n_ctx]

        if not resident or (requested or 0) > (current or 0):
            try:
                gguf = await self.gguf(model)
            except (GGUFError, OSError, ValueError) as exc:
                if not resident:  # as admission would have said, had the file broken before the request came
                    self.record_failure(model, str(exc))
                    raise unreadable(model, exc) from None
                decision = ContextDecision(
                    current or entry.n_ctx, False, f"num_ctx {requested}: the GGUF cannot be read ({exc})", requested
                )
                self.note_context(model, decision)
                assert self.worker is not None
                return self.worker, decision
            n_ctx_train = gguf.context_length
            # a swap gives back the other model's memory, a resize this one's
            budget = self.budget(replacing=self.worker is not None)
        decision = choose_context(
            requested,
            current,
            entry.n_ctx,
            n_ctx_train,
            plan_at,
            last_resize_at=self.resized_at.get(model),
            now=time.monotonic(),
            min_interval=self.admission.min_residency,
        )
        self.note_context(model, decision)
        if resident and not decision.reload:
            assert self.worker is not None
            return self.worker, decision
        plan = plan_at(decision.n_ctx)
        if not plan.fits:
            raise ModelTooLarge(f"model {model!r} {plan.reason}", retry_after=60)
        if not resident:
            return await self.load(model, plan, why), decision
        self.resized_at[model] = time.monotonic()
        try:
            worker = await self.load(model, plan, f"context {current} -> {decision.n_ctx} ({decision.reason})")
        except (ModelLoadFailed, ServiceUnavailable) as exc:
            # the model served at the old context a moment ago: go back to it rather than fail the request
            assert current is not None
            self.failures.pop(model, None)
            decision = ContextDecision(
                current, False, f"resize to {decision.n_ctx} failed ({exc.message}); reloaded at {current}", requested
            )
            log.error("context for %r: %s", model, decision.reason)
            self.note_context(model, decision)
            worker = await self.load(model, plan_at(current), decision.reason)
        return worker, decision

    async def load(self, model: str, plan: Plan, why: str) -> WorkerClient:
        """Stop whatever runs and load ``model`` as ``plan`` says (its GPU layers and context)."""
        previous = self.model
        started = time.monotonic()
        await self.stop_worker(f"context resize of {model!r}" if previous == model else f"swap to {model!r}")
        self.machine.move(SlotState.LOADING, why, model=model)
        self.plan = plan
        path = self.model_file(model)
        entry = self.registry.models[model]
        suspend_bytes = plan.suspend_bytes if self.admission.suspend and entry.generates else 0
        spec = load_spec(
            model, entry, path, plan.gpu_layers, plan.prefix_cache_bytes, plan.n_ctx or None, suspend_bytes
        )
        try:
            worker = await self.take_spare(model)
        except BaseException:
            self.machine.move(SlotState.UNLOADED, "no worker to load into", model=None)
            raise
        try:
            if worker.pid is None:  # no spare was ready
                await worker.start()
            info = await worker.load(spec, self.settings.load_timeout_s)
        except (ModelLoadFailed, WorkerFailed) as exc:
            returncode = await worker.exit_status(0.2)
            await worker.stop()
            if returncode is not None and returncode < 0 and not self.crash_looping(model):
                # killed by a signal while starting or loading (an operator, the OOM killer): no verdict on
                # the file yet, so no back-off; this client hears 503 and the next request loads afresh. A
                # model that keeps dying this way reaches the crash-loop limit and backs off like any failed load.
                self.stats[model].crashes.append(time.monotonic())
                how = describe_exit(returncode)
                self.machine.move(SlotState.UNLOADED, f"worker {how} while loading", model=None)
                self.start_spare()
                log.error("worker for %r %s while loading; not backing off", model, how)
                raise ServiceUnavailable(
                    f"the model worker {how} while loading {model!r}; retry",
                    code=Failure.WORKER_CRASHED,
                    retry_after=1,
                ) from None
            self.record_failure(model, exc.message)
            self.machine.move(SlotState.FAILED, exc.message)
            self.start_spare()
            raise ModelLoadFailed(
                exc.message,
                code=Failure.MODEL_LOAD_FAILED,
                retry_after=self.failures[model].retry_at - time.monotonic(),
            ) from None
        except BaseException:
            await worker.stop()
            self.machine.move(SlotState.UNLOADED, "load interrupted", model=None)
            raise
        duration = time.monotonic() - started
        self.worker, self.info = worker, info
        self.machine.move(SlotState.READY, f"loaded in {duration * 1000:.0f} ms")
        self.loaded_since = self.last_used = time.monotonic()
        self.failures.pop(model, None)
        self.stats[model].load_s = duration
        swap = SwapRecord(
            at=time.time(),
            previous=previous,
            model=model,
            duration_ms=round(duration * 1000, 1),
            llama_load_ms=info.load_ms,
            gpu_layers=plan.gpu_layers,
            n_ctx=info.n_ctx,
            resize=previous == model,
            reason=why,
        )
        self.swaps.append(swap)
        for listener in self.swap_listeners:
            listener(swap.as_dict())
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
        self.start_spare()
        return worker

    async def stop_worker(self, why: str) -> None:
        worker, self.worker = self.worker, None
        if worker is None:
            return
        log.info("unloading %r (%s)", self.model, why)
        self.machine.move(SlotState.UNLOADING, why)
        await worker.stop()
        self.info, self.plan = None, None
        self.machine.move(SlotState.UNLOADED, why, model=None)

    # --- the spare worker: process start-up off the swap's critical path ------------------------

    def start_spare(self) -> None:
        if not self.admission.spare_worker or self.closing or self.spare is not None:
            return
        if self.spare_task is not None and not self.spare_task.done():
            return
        self.spare_task = asyncio.create_task(self._spawn_spare(), name="zoe-spare-worker")

    async def _spawn_spare(self) -> None:
        spare = self.new_worker("worker:spare")
        try:
            await spare.start()
        except (WorkerFailed, OSError) as exc:
            log.warning("could not start a spare worker: %s", exc)
            await spare.stop()
            return
        self.spare = spare

    async def take_spare(self, model: str) -> WorkerClient:
        """The pre-spawned worker when it is alive, else a new one for the caller to start."""
        if self.spare_task is not None and not self.spare_task.done():
            await asyncio.gather(self.spare_task, return_exceptions=True)
        spare, self.spare = self.spare, None
        if spare is not None and spare.alive:
            spare.label = f"worker:{model}"
            return spare
        if spare is not None:
            await spare.stop()
        # not started here: a start that fails is a failed load, judged by the load's own rules
        return self.new_worker(f"worker:{model}")

    async def close(self) -> None:
        """Stop the spare's start-up, the loaded worker and the spare (the scheduler loop is already stopped)."""
        self.closing = True
        if self.spare_task is not None:
            self.spare_task.cancel()
            await asyncio.gather(self.spare_task, return_exceptions=True)
        await self.stop_worker("shutdown")
        if self.spare is not None:
            await self.spare.stop()
            self.spare = None
