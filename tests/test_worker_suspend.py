"""Suspend and resume a generation between two tokens (issue 18), on a real worker with SmolLM2.

A background generation is suspended after some tokens, other requests run on the same worker
meanwhile, and the background one is resumed: its text and token counts must be exactly those of
an uninterrupted run. At temperature 0 the output is a function of what llama.cpp evaluated, so
the comparison also shows the restored state is the one that was saved.

The prompts are raw text with different first words: no two share a KV prefix, so every run
evaluates its prompt from scratch in one batch, in the baseline worker and in the tested one alike
(a reused prefix would change llama.cpp's batches and with them the last bits of the logits).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, TextDelta
from zoe_edge.worker.client import WorkerProcess
from zoe_edge.worker.control import GenerationControl
from zoe_edge.worker.protocol import LoadSpec, encode_frame, read_frame

# every test needs the module's baseline runs, and its own worker without disk snapshots
pytestmark = [pytest.mark.model, pytest.mark.usefixtures("no_disk_snapshots")]

STALL = 120.0  # a busy 2-core box can be slow; a hang is caught by the explicit waits below
# about 400 tokens: with the tokens generated before the pause, the ~500-token sequence the issue measures
LONG = " ".join(f"Step {i}: mix the flour, knead the dough, let it rest, then bake it." for i in range(24))


def request(prompt: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(model="m", prompt=prompt, max_tokens=max_tokens, sampling={"temperature": 0.0})


BACKGROUND = request(LONG, 120)
SHORT_BACKGROUND = request("The history of bread begins", 100)
NESTED = [request("Paris is a city", 24), request("Once upon a time", 24)]


@dataclass
class Run:
    text: str
    finish: Finish
    events: list[Event]


def run_of(events: list[Event]) -> Run:
    last = events[-1]
    assert isinstance(last, Finish), last
    return Run("".join(e.text for e in events if isinstance(e, TextDelta)), last, events)


async def collect(stream: AsyncIterator[Event]) -> Run:
    return run_of([e async for e in stream])


def spec(path: Path, **overrides: Any) -> LoadSpec:
    fields: dict[str, Any] = {
        "name": "m",
        "path": str(path),
        "n_ctx": 2048,
        "n_batch": 512,
        "n_threads": 1,  # two threads spin at every barrier: on a busy 2-core box that is minutes per test
        "n_gpu_layers": 0,
        "suspend_bytes": 256 * 1024 * 1024,
        **overrides,
    }
    return LoadSpec(**fields)


@contextlib.asynccontextmanager
async def worker(path: Path, **overrides: Any) -> AsyncIterator[WorkerProcess]:
    w = WorkerProcess("suspend-test")
    await w.start()
    try:
        await w.load(spec(path, **overrides), 120)
        yield w
    finally:
        await w.stop()


@pytest.fixture(scope="module")
def no_disk_snapshots() -> Iterator[None]:
    """A worker that ends cleanly writes its long prompts to disk for the next one; not across tests."""
    before = os.environ.get("ZOE_PREFIX_PERSIST")
    os.environ["ZOE_PREFIX_PERSIST"] = "0"
    yield
    if before is None:
        del os.environ["ZOE_PREFIX_PERSIST"]
    else:
        os.environ["ZOE_PREFIX_PERSIST"] = before


@pytest.fixture(scope="module")
def baseline(smollm_path: Path, no_disk_snapshots: None) -> dict[str, Run]:
    """Every request of this module run alone, uninterrupted, on a fresh worker of its own."""

    async def runs() -> dict[str, Run]:
        async with worker(smollm_path) as w:
            named = {"background": BACKGROUND, "short": SHORT_BACKGROUND, "n0": NESTED[0], "n1": NESTED[1]}
            return {name: await collect(w.generate(req, STALL)) for name, req in named.items()}

    return asyncio.run(runs())


class Background:
    """A controlled stream consumed by a task of its own (the worker's answers arrive through it)."""

    def __init__(self, w: WorkerProcess, req: GenerationRequest, pause_after: int, stall: float = STALL) -> None:
        self.control = GenerationControl()
        self.events: list[Event] = []
        self.stamps: list[float] = []
        self.reached = asyncio.Event()
        self._pause_after = pause_after
        self.task = asyncio.create_task(self._consume(w.generate(req, stall, control=self.control)))

    async def _consume(self, stream: AsyncIterator[Event]) -> None:
        async for event in stream:
            self.events.append(event)
            self.stamps.append(time.perf_counter())
            if sum(isinstance(e, TextDelta) for e in self.events) >= self._pause_after:
                self.reached.set()
        self.reached.set()

    async def suspend(self) -> Any:
        await asyncio.wait_for(self.reached.wait(), STALL)
        return await self.control.suspend(timeout=30.0)

    async def finished(self, timeout: float = STALL) -> Run:
        await asyncio.wait_for(self.task, timeout)
        return run_of(self.events)


def same_usage(a: Finish, b: Finish) -> None:
    assert (a.usage.prompt_tokens, a.usage.completion_tokens) == (b.usage.prompt_tokens, b.usage.completion_tokens)


@pytest.mark.parametrize("nested", [1, 2])
async def test_a_suspended_generation_resumes_byte_identical(
    smollm_path: Path, baseline: dict[str, Run], nested: int
) -> None:
    async with worker(smollm_path, prefix_cache_bytes=64 * 1024 * 1024) as w:
        bg = Background(w, BACKGROUND, pause_after=60)
        suspended = await bg.suspend()
        assert suspended is not None, bg.control.refusal
        n_prompt = baseline["background"].finish.usage.prompt_tokens
        # the prompt and every token yielded so far but the last, which the parked generator evaluates next
        assert suspended.tokens >= n_prompt + 60 - 1
        assert suspended.state_bytes > 0 and suspended.save_ms > 0
        frames_while_paused = len(bg.events)

        for i in range(nested):
            if i == 0:
                served = await asyncio.wait_for(collect(w.generate(NESTED[i], STALL)), STALL)
            else:  # one saved state at a time: a nested generation refuses to be suspended itself
                inner = Background(w, NESTED[i], pause_after=5)
                assert await inner.suspend() is None
                assert inner.control.refusal == "another generation is suspended on this worker"
                served = await inner.finished()
            assert served.text == baseline[f"n{i}"].text
            same_usage(served.finish, baseline[f"n{i}"].finish)
            assert served.finish.timings.suspensions == 0
        # the nested requests found the suspended KV already saved: no prefix snapshot of it
        assert w.prefix_cache is not None and w.prefix_cache["saves"] == 0, w.prefix_cache
        assert len(bg.events) == frames_while_paused  # the background stream just paused

        bg.control.resume()
        done = await bg.finished()
        resumed = bg.control.last_resumed
        assert resumed is not None and bg.control.suspended is None
        print(
            f"\nsuspension of a {suspended.tokens}-token sequence: {suspended.state_bytes} bytes, "
            f"save {suspended.save_ms:.2f} ms, restore {resumed.restore_ms:.2f} ms, paused {resumed.paused_ms:.0f} ms"
        )
        assert done.text == baseline["background"].text
        same_usage(done.finish, baseline["background"].finish)
        timings = done.finish.timings
        assert timings.suspensions == 1 and bg.control.suspensions == 1
        assert timings.paused_ms > 0 and timings.paused_ms == pytest.approx(resumed.paused_ms)
        assert timings.suspend_cost_ms == pytest.approx(suspended.save_ms + resumed.restore_ms)
        assert 0 < timings.suspend_cost_ms < timings.paused_ms
        # decoding time leaves the pause out: it fits in the stream's wall time less the pause
        streamed_ms = (bg.stamps[-1] - bg.stamps[0]) * 1000.0
        assert timings.predicted_ms <= streamed_ms - timings.paused_ms + 50.0

        # the prefix cache knows the live KV is the background's again: the next request snapshots it,
        # and the background's prompt then comes back from that snapshot
        other = await collect(w.generate(NESTED[0], STALL))
        assert other.text == baseline["n0"].text
        assert w.prefix_cache is not None and w.prefix_cache["saves"] == 1, w.prefix_cache
        again = await collect(w.generate(request(LONG, 4), STALL))
        assert again.finish.usage.cached_tokens == n_prompt - 1  # one token re-evaluated for the logits


async def test_a_suspension_over_suspend_bytes_is_refused_and_the_stream_goes_on(
    smollm_path: Path, baseline: dict[str, Run]
) -> None:
    async with worker(smollm_path, suspend_bytes=4096) as w:
        bg = Background(w, SHORT_BACKGROUND, pause_after=20)
        assert await bg.suspend() is None
        assert bg.control.refusal is not None and "over the 4096 bytes allowed" in bg.control.refusal
        done = await bg.finished()
        assert done.text == baseline["short"].text
        same_usage(done.finish, baseline["short"].finish)
        assert done.finish.timings.suspensions == 0 and done.finish.timings.paused_ms == 0


async def test_a_resume_before_any_token_boundary_withdraws_the_suspend(
    smollm_path: Path, baseline: dict[str, Run]
) -> None:
    """Suspend and resume go out with the request itself, long before its ~400-token prompt is evaluated."""
    async with worker(smollm_path) as w:
        reader, writer = await asyncio.open_unix_connection(w.socket_path)
        try:
            opening = {"op": "generate", "request": BACKGROUND.model_dump(), "coalesce_ms": 0}
            writer.write(encode_frame(opening) + encode_frame({"op": "suspend"}) + encode_frame({"op": "resume"}))
            await writer.drain()
            frames: list[dict[str, Any]] = []
            texts = 0
            while not frames or frames[-1]["t"] not in ("finish", "error"):
                frame = await asyncio.wait_for(read_frame(reader), STALL)
                assert frame is not None
                frames.append(frame)
                texts += frame["t"] == "text"
                if texts == 20 and frame["t"] == "text":
                    writer.write(encode_frame({"op": "suspend"}))  # a later suspension still works
                elif frame["t"] == "suspended":
                    writer.write(encode_frame({"op": "resume"}))
        finally:
            writer.close()
    kinds = [f["t"] for f in frames]
    control = [(i, k) for i, k in enumerate(kinds) if k not in ("text", "finish")]
    # the withdrawn one left no trace; the one asked after 20 tokens came at the worker's next boundary
    assert [k for _, k in control] == ["suspended", "resumed"], control
    assert control[0][0] >= 20 and control[1][0] == control[0][0] + 1  # nothing streams while suspended
    text = "".join(f["text"] for f in frames if f["t"] == "text")
    assert text == baseline["background"].text
    assert frames[-1]["timings"]["suspensions"] == 1


async def test_a_suspended_stream_outlasts_its_stall_timeout(smollm_path: Path, baseline: dict[str, Run]) -> None:
    async with worker(smollm_path) as w:
        bg = Background(w, SHORT_BACKGROUND, pause_after=20, stall=3.0)
        assert await bg.suspend() is not None
        await asyncio.sleep(4.0)  # nothing arrives meanwhile, rightly
        assert not bg.task.done()
        bg.control.resume()
        done = await bg.finished()
        assert done.text == baseline["short"].text
        assert done.finish.timings.paused_ms >= 4000.0


async def test_a_shutdown_while_suspended_ends_the_generation_and_the_worker(smollm_path: Path) -> None:
    async with worker(smollm_path) as w:
        bg = Background(w, SHORT_BACKGROUND, pause_after=20)
        assert await bg.suspend() is not None
        reader, writer = await asyncio.open_unix_connection(w.socket_path)
        writer.write(encode_frame({"op": "shutdown"}))
        assert await asyncio.wait_for(read_frame(reader), 10.0) == {"t": "bye"}
        writer.close()
        await asyncio.wait_for(bg.task, 10.0)
        last = bg.events[-1]
        assert isinstance(last, ErrorEvent) and last.code == "shutting_down", last
        assert await w.exit_status(10.0) == 0


async def test_a_worker_killed_while_suspended_ends_the_stream_at_once(smollm_path: Path) -> None:
    async with worker(smollm_path) as w:
        bg = Background(w, SHORT_BACKGROUND, pause_after=20)
        assert await bg.suspend() is not None
        assert w.pid is not None
        os.kill(w.pid, signal.SIGKILL)
        await asyncio.wait_for(bg.task, 10.0)  # no stall limit applies while suspended: EOF must end it
        last = bg.events[-1]
        assert isinstance(last, ErrorEvent) and last.code == "worker_crashed", last
        assert "SIGKILL" in last.message
        assert bg.control.ended and not bg.control.suspendable


async def test_a_cancel_while_suspended_lets_the_nested_request_finish_and_the_worker_serve_on(
    smollm_path: Path, baseline: dict[str, Run]
) -> None:
    async with worker(smollm_path) as w:
        pid = w.pid
        bg = Background(w, SHORT_BACKGROUND, pause_after=20)
        assert await bg.suspend() is not None
        nested_events: list[Event] = []
        first = asyncio.Event()

        async def nested() -> None:
            async for event in w.generate(NESTED[0], STALL):
                nested_events.append(event)
                first.set()

        nested_task = asyncio.create_task(nested())
        await asyncio.wait_for(first.wait(), STALL)
        bg.task.cancel()  # the daemon closes the background stream while the nested request runs
        with contextlib.suppress(asyncio.CancelledError):
            await bg.task
        assert bg.control.ended
        await asyncio.wait_for(nested_task, STALL)
        assert run_of(nested_events).text == baseline["n0"].text

        # the background generation ended as cancelled: the worker takes the next request as usual
        later = await asyncio.wait_for(collect(w.generate(NESTED[1], STALL)), STALL)
        assert later.text == baseline["n1"].text
        assert w.alive and w.pid == pid

        # and again with nothing nested: cancel the suspended one, then a new one is served at once
        bg = Background(w, SHORT_BACKGROUND, pause_after=20)
        assert await bg.suspend() is not None
        bg.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bg.task
        after = await asyncio.wait_for(collect(w.generate(NESTED[0], STALL)), STALL)
        assert after.text == baseline["n0"].text and w.pid == pid


def test_the_engine_evaluates_nothing_twice_across_a_suspension(smollm_path: Path) -> None:
    """In process: the resumed generator evaluates exactly the tokens an uninterrupted one does."""
    from zoe_edge.worker.engine import Engine
    from zoe_edge.worker.suspension import Pause

    engine = Engine(spec(smollm_path))
    llama = engine.llm._llm  # the counting wrapper calls straight through to llama.cpp
    real_eval: Callable[[list[int]], None] = llama.eval
    evaluated = {"background": 0, "nested": 0}
    bucket = ["background"]

    def counting_eval(tokens: list[int]) -> None:
        evaluated[bucket[0]] += len(tokens)
        real_eval(tokens)

    llama.eval = counting_eval
    try:
        evaluated["background"] = 0
        alone = run_of(list(engine.generate(SHORT_BACKGROUND, lambda: False)))
        alone_evaluated = evaluated["background"]
        # shares no prefix with either: the next background run evaluates its prompt from scratch again
        nested_alone = run_of(list(engine.generate(NESTED[0], lambda: False)))
        seen = [0]
        nested_runs: list[Run] = []

        def checkpoint() -> Pause | None:
            seen[0] += 1
            if seen[0] != 50:
                return None
            state = engine.llm.save_live()
            bucket[0] = "nested"
            nested_runs.append(run_of(list(engine.generate(NESTED[0], lambda: False))))
            bucket[0] = "background"
            engine.llm.restore_live(state)
            assert engine.llm.cached_tokens() == list(state.tokens)
            return Pause(1.0, 0.5)

        evaluated["background"] = 0
        paused = run_of(list(engine.generate(SHORT_BACKGROUND, lambda: False, checkpoint)))
    finally:
        engine.close()
    # the prompt once, then each token but the last (sampled, never evaluated): the same with the pause
    usage = paused.finish.usage
    assert usage.cached_tokens == 0
    assert evaluated["background"] == alone_evaluated == usage.prompt_tokens + usage.completion_tokens - 1
    assert paused.text == alone.text
    assert nested_runs[0].text == nested_alone.text
    assert paused.finish.timings.suspensions == 1 and paused.finish.timings.paused_ms == 1.0
    assert paused.finish.timings.suspend_cost_ms == 0.5
