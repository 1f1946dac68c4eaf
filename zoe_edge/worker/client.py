"""The daemon's handle on one worker process: spawn, load, stream a generation, embed, stop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, event_from_wire
from zoe_edge.errors import Failure, ModelLoadFailed, ServiceUnavailable, WorkerFailed, error_for_status
from zoe_edge.worker.control import GenerationControl, Resumed, Suspended
from zoe_edge.worker.protocol import (
    SUSPEND_FRAMES,
    Embedded,
    LoadSpec,
    ModelInfo,
    ProtocolError,
    encode_frame,
    read_frame,
)

log = logging.getLogger("zoe_edge.worker")


# the directory holding the zoe_edge package, resolved once at import rather than per spawn
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def control_frame(frame: dict[str, Any], control: GenerationControl | None) -> bool:
    """Hand a suspension frame to ``control``; ``False`` for any other frame (an event)."""
    kind = frame.get("t")
    if kind not in SUSPEND_FRAMES:
        return False
    if control is None:
        log.warning("a %s frame for a generation nobody controls; ignored", kind)
        return True
    try:
        if kind == "suspended":
            suspended = Suspended(int(frame["tokens"]), int(frame["state_bytes"]), float(frame["save_ms"]))
            control.confirm_suspended(suspended)
        elif kind == "resumed":
            control.confirm_resumed(Resumed(float(frame["restore_ms"]), float(frame["paused_ms"])))
        else:
            control.refuse(str(frame.get("reason", "refused")))
    except (KeyError, TypeError, ValueError) as exc:
        log.error("malformed %s frame from the worker (%s): %r", kind, exc, frame)
        control.refuse(f"malformed {kind} frame")
    return True


class WorkerProcess:
    """One spawned ``python -m zoe_edge.worker``; loads at most one model in its life."""

    def __init__(self, label: str = "worker") -> None:
        self.label = label
        self._dir = tempfile.mkdtemp(prefix="zoe-edge-worker-")
        self.socket_path = os.path.join(self._dir, "worker.sock")
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.info: ModelInfo | None = None
        self.prefix_cache: dict[str, Any] | None = None  # the worker's figures after its last request

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self, timeout: float = 60.0) -> None:
        """Spawn the process and wait until it listens."""
        env = dict(os.environ)
        # the worker must import this very package, also when the daemon runs from a source tree
        src_root = _SOURCE_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zoe_edge.worker",
            "--socket",
            self.socket_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._tasks.append(asyncio.create_task(self._pump_stderr(self._proc.stderr)))
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise WorkerFailed(f"{self.label} did not start within {timeout:.0f} s") from None
        if not line.startswith(b"READY"):
            await self._reap(1.0)
            tail = " | ".join(list(self.stderr_tail)[-3:])
            await self.stop()
            raise WorkerFailed(f"{self.label} failed to start ({describe_exit(self.returncode)}): {tail}")
        self._tasks.append(asyncio.create_task(self._drain(self._proc.stdout)))

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", errors="replace").rstrip()
            if text:
                self.stderr_tail.append(text)
                log.info("[%s] %s", self.label, text)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    async def _reap(self, timeout: float) -> None:
        if self._proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), timeout)

    async def exit_status(self, wait: float) -> int | None:
        """The exit status once the process has ended (waiting up to ``wait`` s for it), else ``None``."""
        await self._reap(wait)
        return self.returncode

    async def _call(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket_path), timeout)
        try:
            writer.write(encode_frame(payload))
            await writer.drain()
            reply = await asyncio.wait_for(read_frame(reader), timeout)
        finally:
            writer.close()
        if reply is None:
            await self._reap(1.0)
            raise WorkerFailed(f"{self.label} {describe_exit(self.returncode)} during {payload.get('op')}")
        return reply

    async def load(self, spec: LoadSpec, timeout: float) -> ModelInfo:
        """Load the model; every failure becomes :class:`ModelLoadFailed` with a readable reason."""
        try:
            reply = await self._call({"op": "load", "spec": spec.model_dump()}, timeout)
        except asyncio.TimeoutError:
            await self.kill()
            raise ModelLoadFailed(f"model {spec.name!r} did not load within {timeout:.0f} s") from None
        except (OSError, WorkerFailed, ProtocolError) as exc:
            raise ModelLoadFailed(f"model {spec.name!r} failed to load: {exc}") from None
        if reply.get("t") != "loaded":
            detail = str(reply.get("message", "unknown error"))
            llama_lines = [ln for ln in self.stderr_tail if "error" in ln.lower() or "failed" in ln.lower()]
            if llama_lines:
                detail += f" ({llama_lines[-1]})"
            raise ModelLoadFailed(f"model {spec.name!r} failed to load from {spec.path}: {detail}")
        self.info = ModelInfo.model_validate(reply["info"])
        return self.info

    async def generate(
        self,
        req: GenerationRequest,
        stall_timeout: float,
        coalesce_ms: float = 0.0,
        control: GenerationControl | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Stream canonical events. Closing this generator early cancels the generation in the worker.

        A worker that dies or stalls yields an :class:`ErrorEvent` (code ``worker_crashed`` or
        ``worker_timeout``) instead of raising, so the front can end a stream cleanly. With
        ``control`` the generation can be suspended: its ops go out on this connection, the worker's
        answers go to the control (never out as events), and a suspended stream waits without a
        stall limit, since it rightly sends nothing while another request runs; a worker that dies
        meanwhile still ends it at once (the connection closes).
        """
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as exc:
            if control is not None:
                control.mark_ended()
            yield ErrorEvent(f"the model worker is not reachable: {exc}", "worker_crashed", 503)
            return

        def send_op(op: str) -> None:
            if writer.is_closing():
                raise RuntimeError("the generation's connection is closed")
            writer.write(encode_frame({"op": op}))

        if control is not None:
            control.attach(send_op)
        try:
            writer.write(encode_frame({"op": "generate", "request": req.model_dump(), "coalesce_ms": coalesce_ms}))
            await writer.drain()
            while True:
                paused = control is not None and control.suspended is not None
                try:
                    frame = await asyncio.wait_for(read_frame(reader), None if paused else stall_timeout)
                except asyncio.TimeoutError:
                    log.error("%s sent nothing for %.0f s; killing it", self.label, stall_timeout)
                    await self.kill()
                    yield ErrorEvent(
                        f"the model worker stalled for {stall_timeout:.0f} s and was restarted", "worker_timeout", 503
                    )
                    return
                except (ProtocolError, OSError) as exc:
                    frame = None
                    log.error("%s broke the protocol: %s", self.label, exc)
                if frame is None:
                    await self._reap(1.0)
                    how = describe_exit(self.returncode)
                    log.error("%s %s in the middle of a generation", self.label, how)
                    yield ErrorEvent(f"the model worker {how} during generation", "worker_crashed", 503)
                    return
                if control_frame(frame, control):
                    continue
                if frame.get("t") == "finish" and isinstance(frame.get("prefix_cache"), dict):
                    self.prefix_cache = frame["prefix_cache"]
                event = event_from_wire(frame)
                if control is not None:
                    control.mark_started()
                yield event
                if isinstance(event, Finish | ErrorEvent):
                    return
        finally:
            if control is not None:
                control.mark_ended()
            writer.close()

    async def embed(self, texts: list[str], truncate: bool, timeout: float) -> Embedded:
        """One vector per text. The worker's refusal is the error its status names (400 for what this model
        cannot embed); a death or a stall is :class:`ServiceUnavailable` ``worker_crashed`` / ``worker_timeout``."""
        try:
            reply = await self._call({"op": "embed", "texts": texts, "truncate": truncate}, timeout)
        except asyncio.TimeoutError:
            log.error("%s took over %.0f s to embed; killing it", self.label, timeout)
            await self.kill()
            raise ServiceUnavailable(
                f"the model worker stalled for {timeout:.0f} s and was restarted",
                code=Failure.WORKER_TIMEOUT,
                retry_after=5,
            ) from None
        except (OSError, ProtocolError, WorkerFailed) as exc:
            await self._reap(1.0)
            raise ServiceUnavailable(
                f"the model worker {describe_exit(self.returncode)} during an embedding ({exc})",
                code=Failure.WORKER_CRASHED,
                retry_after=1,
            ) from None
        if reply.get("t") != "embedded":
            status = reply.get("status")
            code = reply.get("code")
            raise error_for_status(
                status if isinstance(status, int) else 500,
                str(reply.get("message", "the worker could not embed")),
                code=code if isinstance(code, str) and code != "protocol" else None,
            )
        return Embedded.model_validate(reply)

    async def kill(self) -> None:
        if self.alive:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        await self._reap(5.0)

    async def stop(self, grace: float = 5.0) -> None:
        """End the process (memory returns to the system) and clean up its socket."""
        if self.alive:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            await self._reap(grace)
            await self.kill()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)
