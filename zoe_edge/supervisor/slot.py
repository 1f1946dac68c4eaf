"""The single model slot: one worker process, one loaded model, one generation at a time.

The slot carries out decisions; it does not make them. It loads the requested model when another
(or none) is loaded, streams one generation at a time, and notices a dead worker so the next
request starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from zoe_edge.canonical import ErrorEvent, Event, GenerationRequest
from zoe_edge.config import Settings
from zoe_edge.errors import ModelLoadFailed, ServiceUnavailable, WorkerFailed
from zoe_edge.gguf_info import GGUFError, read_gguf
from zoe_edge.registry import ModelEntry, Registry, ensure_model_file
from zoe_edge.worker.client import WorkerProcess
from zoe_edge.worker.protocol import LoadSpec, ModelInfo

log = logging.getLogger("zoe_edge.supervisor")

# llama.cpp clamps the layer count to the model's; a CPU-only build ignores it altogether
ALL_LAYERS = 999


class SlotState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    BUSY = "busy"
    UNLOADING = "unloading"
    FAILED = "failed"


def default_threads() -> int:
    """Physical cores: llama.cpp gains nothing from SMT siblings and loses to contention."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def load_spec(name: str, entry: ModelEntry, path: Path) -> LoadSpec:
    return LoadSpec(
        name=name,
        path=str(path),
        n_ctx=entry.n_ctx,
        n_batch=min(entry.n_batch, entry.n_ctx),
        n_threads=entry.n_threads or default_threads(),
        n_gpu_layers=ALL_LAYERS if entry.gpu_layers == "auto" else entry.gpu_layers,
        chat_format=entry.chat_format,
        tool_format=entry.tool_format,
    )


@dataclass
class SlotStatus:
    state: SlotState = SlotState.UNLOADED
    model: str | None = None
    since: float = field(default_factory=time.time)
    info: ModelInfo | None = None
    last_error: str | None = None
    loads: int = 0
    crashes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "model": self.model,
            "since": self.since,
            "info": self.info.model_dump() if self.info else None,
            "last_error": self.last_error,
            "loads": self.loads,
            "crashes": self.crashes,
        }


class Supervisor:
    def __init__(self, registry: Registry, registry_dir: Path, settings: Settings) -> None:
        self.registry = registry
        self.registry_dir = registry_dir
        self.settings = settings
        self.status = SlotStatus()
        self._worker: WorkerProcess | None = None
        self._slot = asyncio.Lock()  # FIFO: requests are served in arrival order
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.settings.preload:
            return
        model = self.registry.default_model
        try:
            async with self._slot:
                await self._ensure_loaded(model)
        except (ModelLoadFailed, WorkerFailed) as exc:
            log.error("preload of %r failed: %s", model, exc)

    async def close(self) -> None:
        self._closing = True
        async with self._slot:
            await self._unload("shutdown")

    # --- files -------------------------------------------------------------------------------

    def model_file(self, model: str) -> Path:
        return ensure_model_file(self.registry.models[model], self.registry_dir, self.settings.state_dir)

    async def check_loadable(self, model: str) -> str | None:
        """Why ``model`` cannot be loaded right now (missing or corrupt file), or ``None``."""
        try:
            path = await asyncio.to_thread(self.model_file, model)
            await asyncio.to_thread(read_gguf, path)
        except (GGUFError, OSError, ValueError) as exc:
            return str(exc)
        return None

    # --- the slot ----------------------------------------------------------------------------

    async def _unload(self, why: str) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        log.info("unloading %r (%s)", self.status.model, why)
        self.status.state = SlotState.UNLOADING
        await worker.stop()
        self.status = SlotStatus(
            loads=self.status.loads, crashes=self.status.crashes, last_error=self.status.last_error
        )

    async def _ensure_loaded(self, model: str) -> WorkerProcess:
        worker = self._worker
        if worker is not None and worker.alive and self.status.model == model:
            return worker
        if worker is not None and not worker.alive:
            self.status.crashes += 1
            log.warning("worker for %r %s; starting a fresh one", self.status.model, "died")
        await self._unload(f"switching to {model!r}" if worker is not None else "not loaded")

        problem = await self.check_loadable(model)
        if problem is not None:
            self._fail(model, problem)
            raise ModelLoadFailed(f"model {model!r} cannot be loaded: {problem}", retry_after=30)
        spec = load_spec(model, self.registry.models[model], self.model_file(model))
        self.status = SlotStatus(SlotState.LOADING, model, loads=self.status.loads, crashes=self.status.crashes)
        started = time.perf_counter()
        worker = WorkerProcess(label=f"worker:{model}")
        try:
            await worker.start()
            info = await worker.load(spec, self.settings.load_timeout_s)
        except (ModelLoadFailed, WorkerFailed) as exc:
            await worker.stop()
            self._fail(model, str(exc))
            raise ModelLoadFailed(str(exc), retry_after=30) from None
        except BaseException:
            await worker.stop()
            raise
        self._worker = worker
        self.status.state = SlotState.READY
        self.status.info = info
        self.status.loads += 1
        log.info(
            "loaded %r in %.0f ms (llama.cpp %.0f ms, pid %d)",
            model,
            (time.perf_counter() - started) * 1000,
            info.load_ms,
            info.pid,
        )
        return worker

    def _fail(self, model: str, reason: str) -> None:
        log.error("model %r failed: %s", model, reason)
        self.status = SlotStatus(
            SlotState.FAILED, model, last_error=reason, loads=self.status.loads, crashes=self.status.crashes
        )

    async def generate(self, model: str, req: GenerationRequest) -> AsyncGenerator[Event, None]:
        """Stream one generation on ``model``, loading it first if needed.

        Raises :class:`ModelLoadFailed` or :class:`ServiceUnavailable` before the first event; after
        that, failures arrive as an :class:`ErrorEvent`. Callers must close the iterator
        (``contextlib.aclosing``) so an abandoned request frees the slot at once.
        """
        if self._closing:
            raise ServiceUnavailable("zoe-edge is shutting down", retry_after=5)
        async with self._slot:
            worker = await self._ensure_loaded(model)
            self.status.state = SlotState.BUSY
            try:
                async with contextlib.aclosing(
                    worker.generate(req, self.settings.stall_timeout_s, self.settings.stream_interval_ms)
                ) as events:
                    async for event in events:
                        if isinstance(event, ErrorEvent) and event.code in ("worker_crashed", "worker_timeout"):
                            self.status.crashes += 1
                            self.status.last_error = event.message
                        yield event
            finally:
                if worker.alive:
                    self.status.state = SlotState.READY
                else:
                    # the next request starts a fresh worker; clean this one up now
                    await self._unload("worker died")
