"""In-process fake workers: the worker client's contract (start, load, stream, suspend, die, stop)
with no model and no subprocess, so tests drive the real Supervisor's scheduling, swaps and retries.

A generation yields ``World.tokens`` (or the ``|``-separated pieces of a raw prompt), honours a
suspension at each token boundary as the real worker does (it pauses until resumed, or ends with
``worker_crashed`` when the worker is killed meanwhile), and finishes with timings that report it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, TextDelta, Timings, Usage
from zoe_edge.errors import ModelLoadFailed, WorkerFailed
from zoe_edge.supervisor.workers import WorkerClient
from zoe_edge.worker.control import GenerationControl, Resumed, Suspended
from zoe_edge.worker.protocol import LoadSpec, ModelInfo

_pids = itertools.count(900_001)


class _Run:
    """One fake generation's suspension switch (the real worker's watcher thread and checkpoint)."""

    def __init__(self, worker: FakeWorker, control: GenerationControl | None) -> None:
        self.worker = worker
        self.control = control
        self.asked = False
        self.resume = asyncio.Event()
        self.suspensions = 0
        self.paused_ms = 0.0
        if control is not None:
            control.attach(self._deliver)

    def _deliver(self, op: str) -> None:
        if op == "suspend":
            self.asked = True
            self.resume.clear()
        elif op == "resume":
            self.asked = False  # withdraws a pending request, or ends a pause
            self.resume.set()

    async def wait(self, event: asyncio.Event) -> None:
        """Wait for ``event``, honouring suspensions meanwhile (a held generation is still between tokens)."""
        while not event.is_set():
            await asyncio.sleep(0.005)
            await self.checkpoint(produced=1)

    async def checkpoint(self, produced: int) -> bool:
        """``False``: the worker died while the generation was paused."""
        if not self.asked or self.control is None:
            return True
        self.asked = False
        refusal = self.worker.world.refuse_suspend
        if refusal is not None:
            self.control.refuse(refusal)
            return True
        started = time.monotonic()
        self.control.confirm_suspended(Suspended(tokens=3 + produced, state_bytes=1000 * (3 + produced), save_ms=0.1))
        resumed = asyncio.create_task(self.resume.wait())
        died = asyncio.create_task(self.worker.died.wait())
        await asyncio.wait({resumed, died}, return_when=asyncio.FIRST_COMPLETED)
        resumed.cancel()
        died.cancel()
        if not self.worker.alive:
            return False
        self.suspensions += 1
        paused = (time.monotonic() - started) * 1000.0
        self.paused_ms += paused
        self.control.confirm_resumed(Resumed(restore_ms=0.1, paused_ms=paused))
        return True


@dataclass
class World:
    """What the fake workers share: the test's knobs and a record of every worker made."""

    workers: list[FakeWorker] = field(default_factory=list)
    # generations (counted over all workers) whose worker dies before sending anything
    deaths_before_first_token: int = 0
    # models whose load fails as a bad file's would
    broken: set[str] = field(default_factory=set)
    # while set, a generation holds the slot after its first token until the test clears it
    hold: asyncio.Event | None = None
    tokens: tuple[str, ...] = ("Hello", " there")
    token_s: float = 0.0  # the time each token takes
    refuse_suspend: str | None = None  # a reason to refuse every suspension (as a worker without room does)

    def factory(self, label: str) -> WorkerClient:
        worker = FakeWorker(self, label)
        self.workers.append(worker)
        return worker

    def loaded(self) -> list[str]:
        return [w.spec.name for w in self.workers if w.spec is not None]


class FakeWorker:
    """A worker that lives in this process: the same contract as WorkerProcess, the same failure shapes."""

    def __init__(self, world: World, label: str) -> None:
        self.world = world
        self.label = label
        self._pid: int | None = None
        self._returncode: int | None = None
        self.spec: LoadSpec | None = None
        self.generations = 0
        self._prefix_cache: dict[str, Any] | None = None
        self.died = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def alive(self) -> bool:
        return self._pid is not None and self._returncode is None

    @property
    def prefix_cache(self) -> dict[str, Any] | None:
        return self._prefix_cache

    async def start(self, timeout: float = 60.0) -> None:
        if self._pid is not None:
            raise WorkerFailed(f"{self.label} was started twice")
        self._pid = next(_pids)
        await asyncio.sleep(0)

    async def load(self, spec: LoadSpec, timeout: float) -> ModelInfo:
        if not self.alive:
            raise ModelLoadFailed(f"model {spec.name!r} failed to load: {self.label} is not running")
        if self.spec is not None:
            raise ModelLoadFailed(f"{self.label} already holds {self.spec.name!r}; a worker loads once")
        await asyncio.sleep(0.01)
        if spec.name in self.world.broken:
            raise ModelLoadFailed(f"model {spec.name!r} failed to load from {spec.path}: not a model")
        self.spec = spec
        assert self._pid is not None
        return ModelInfo(
            name=spec.name,
            n_ctx=spec.n_ctx,
            n_ctx_train=8192,
            n_params=134_515_008,
            size_bytes=1,
            n_gpu_layers=spec.n_gpu_layers,
            chat_template_source="gguf",
            load_ms=10.0,
            pid=self._pid,
        )

    async def generate(
        self,
        req: GenerationRequest,
        stall_timeout: float,
        coalesce_ms: float = 0.0,
        control: GenerationControl | None = None,
    ) -> AsyncGenerator[Event, None]:
        if not self.alive or self.spec is None:
            yield ErrorEvent("the model worker is not reachable: no socket", "worker_crashed", 503)
            return
        self.generations += 1
        if self.world.deaths_before_first_token > 0:
            self.world.deaths_before_first_token -= 1
            self._returncode = -9  # as SIGKILL leaves it
            yield ErrorEvent("the model worker was killed by SIGKILL during generation", "worker_crashed", 503)
            return
        tokens = req.prompt.split("|") if req.prompt and "|" in req.prompt else list(self.world.tokens)
        run = _Run(self, control)
        try:
            for i, text in enumerate(tokens):
                if self.world.token_s:
                    await asyncio.sleep(self.world.token_s)
                if not self.alive:  # killed mid-stream: the socket ends, as a real worker's does
                    yield ErrorEvent("the model worker was killed by SIGKILL during generation", "worker_crashed", 503)
                    return
                yield TextDelta(text)
                if control is not None:
                    control.mark_started()
                if i == 0 and self.world.hold is not None:
                    await run.wait(self.world.hold)
                # a token boundary: where a real worker honours a suspension
                if not await run.checkpoint(produced=i + 1):
                    yield ErrorEvent("the model worker was killed by SIGKILL during generation", "worker_crashed", 503)
                    return
            self._prefix_cache = {"entries": 0}
            timings = Timings(1.0, 2.0, suspensions=run.suspensions, paused_ms=run.paused_ms, suspend_cost_ms=0.2)
            yield Finish("stop", Usage(prompt_tokens=3, completion_tokens=len(tokens)), timings)
        finally:
            if control is not None:
                control.mark_ended()

    async def exit_status(self, wait: float) -> int | None:
        return self._returncode

    async def kill(self) -> None:
        if self.alive:
            self._returncode = -9
            self.died.set()

    async def stop(self, grace: float = 5.0) -> None:
        if self.alive:
            self._returncode = -15
            self.died.set()
