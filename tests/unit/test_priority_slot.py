"""The real Supervisor's priorities, deadline bound and suspensions, driven by in-process fake workers.

The fakes (tests/fakes/worker.py) honour a suspension at each token boundary as the real worker
does; what is tested here is the scheduler's side: who is served when, what leaves the queue at
its deadline, when a background generation pauses and resumes, and what the status says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.fakes.worker import World
from tests.unit.conftest import MakeSupervisor
from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, Priority, TextDelta
from zoe_edge.errors import Failure, ServiceUnavailable
from zoe_edge.supervisor import SlotState, Supervisor

I, N, B = Priority.INTERACTIVE, Priority.NORMAL, Priority.BACKGROUND  # noqa: E741


def pieces(name: str, n: int) -> GenerationRequest:
    """A raw prompt the fake worker answers with ``n`` tokens named after ``name``."""
    return GenerationRequest(model="a", prompt="|".join(f"{name}{i} " for i in range(n)), max_tokens=n)


async def run(
    sup: Supervisor, req: GenerationRequest, priority: Priority, deadline: float | None = None
) -> list[Event]:
    async with contextlib.aclosing(sup.generate("a", req, deadline, priority)) as events:
        return [event async for event in events]


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def until(condition: object, timeout: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true")
        await asyncio.sleep(0.005)


async def streaming(sup: Supervisor) -> None:
    """Until the slot's holder has streamed its first event (from then on it is between tokens)."""
    await until(
        lambda: (
            sup.queue.holder is not None and sup.queue.holder.control is not None and sup.queue.holder.control.started
        )
    )


async def started(sup: Supervisor) -> Supervisor:
    await sup.start()
    await sup.load("a")
    return sup


async def test_the_queue_serves_interactive_then_normal_then_background(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor())
    world.hold = asyncio.Event()
    order: list[str] = []

    async def one(name: str, priority: Priority) -> None:
        events = await run(sup, pieces(name, 2), priority, deadline=30)
        order.append(name)
        assert isinstance(events[-1], Finish)

    holder = asyncio.create_task(one("hold", N))
    await until(lambda: sup.queue.holder is not None)
    tasks = []
    for name, priority in (("bg", B), ("normal", N), ("voice", I)):  # queued in the worst order
        tasks.append(asyncio.create_task(one(name, priority)))
        queued = len(tasks)
        await until(lambda: len(sup.queue.waiting) == queued)  # noqa: B023
    assert sup.status()["queue"]["by_priority"] == {"interactive": 1, "normal": 1, "background": 1}
    world.hold.set()
    await asyncio.wait_for(asyncio.gather(holder, *tasks), 10)
    assert order == ["hold", "voice", "normal", "bg"]


async def test_a_starving_background_request_is_served_within_the_bound(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor(starvation="300ms"))
    world.token_s = 0.05
    first_token: dict[str, float] = {}

    async def one(name: str, priority: Priority) -> None:
        async with contextlib.aclosing(sup.generate("a", pieces(name, 3), 30, priority)) as events:
            async for _ in events:
                first_token.setdefault(name, time.monotonic())

    # voice turns of ~150 ms keep arriving every 100 ms: without a bound the background job would
    # wait behind all of them
    voice = [asyncio.create_task(one("voice-first", I))]
    await until(lambda: sup.queue.holder is not None)
    queued_at = time.monotonic()
    bg = asyncio.create_task(one("bg", B))
    for i in range(8):
        await asyncio.sleep(0.1)
        voice.append(asyncio.create_task(one(f"voice{i}", I)))
    await asyncio.wait_for(asyncio.gather(bg, *voice), 20)
    started_after = first_token["bg"] - queued_at
    later = [name for name, at in first_token.items() if at > first_token["bg"]]
    assert later, first_token  # it went before voice turns that were already queued
    # picked at the first turn's end after 300 ms of waiting: one 150 ms turn past the bound, and slack
    assert 0.3 <= started_after < 0.3 + 0.15 + 0.35, started_after


async def test_a_deadline_bounds_the_wait_under_a_queue_of_mixed_priorities(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor())
    # measured speeds first: the fake's timings say 1 ms per token, so the prediction is optimistic
    assert isinstance((await run(sup, pieces("warm", 4), N))[-1], Finish)
    assert sup.queue.speeds["a"].decode_s_per_token is not None
    world.hold = asyncio.Event()  # from now on the first generation holds the slot until released
    holder = asyncio.create_task(run(sup, pieces("long", 3), N))
    await until(lambda: sup.queue.holder is not None)
    background = [asyncio.create_task(run(sup, pieces(f"bg{i}", 2), B, deadline=30)) for i in range(3)]
    await until(lambda: len(sup.queue.waiting) == 3)

    async def timed(priority: Priority, deadline: float) -> tuple[float, BaseException | None]:
        t0 = time.monotonic()
        try:
            await run(sup, pieces("late", 2), priority, deadline=deadline)
        except ServiceUnavailable as exc:
            return time.monotonic() - t0, exc
        return time.monotonic() - t0, None

    results = await asyncio.gather(timed(I, 0.3), timed(N, 0.5), timed(B, 0.4))
    for (elapsed, exc), bound in zip(results, (0.3, 0.5, 0.4), strict=True):
        assert isinstance(exc, ServiceUnavailable) and exc.kind is Failure.BUSY, exc
        assert "deadline" in exc.message and "predicted wait" in exc.message
        assert bound <= elapsed < bound + 0.5, (bound, elapsed)  # it left at its own deadline, not later
    status = sup.status()["scheduling"]["prediction"]
    assert status["expired"] == 3
    assert len(sup.queue.waiting) == 3  # the ones that left are gone; the patient background ones stay
    world.hold.set()
    for events in await asyncio.wait_for(asyncio.gather(holder, *background), 10):
        assert isinstance(events[-1], Finish)
    assert sup.status()["scheduling"]["prediction"]["samples"] >= 4


async def test_an_interactive_request_suspends_a_background_generation(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor())
    world.token_s = 0.01
    bg_req = pieces("bg", 60)
    alone = text(await run(sup, bg_req, B))
    bg_events: list[Event] = []
    marks: dict[str, float] = {}

    async def background() -> None:
        async with contextlib.aclosing(sup.generate("a", bg_req, None, B)) as events:
            async for event in events:
                bg_events.append(event)
                marks.setdefault("bg_first", time.monotonic())
        marks["bg_done"] = time.monotonic()

    bg = asyncio.create_task(background())
    await until(lambda: len(bg_events) >= 5)
    seen: dict[str, object] = {}

    async def watch() -> None:
        await until(lambda: sup.queue.suspended is not None)
        seen.update(sup.status()["scheduling"])
        seen["state"] = sup.state

    watcher = asyncio.create_task(watch())
    t0 = time.monotonic()
    voice = await asyncio.wait_for(run(sup, pieces("voice", 5), I, deadline=1.0), 5)
    marks["voice_done"] = time.monotonic()
    await asyncio.wait_for(bg, 10)
    await asyncio.wait_for(watcher, 1)
    assert text(voice) == "".join(f"voice{i} " for i in range(5))
    assert marks["voice_done"] - t0 < 1.0  # it did not wait for the 60-token background stream
    assert marks["voice_done"] < marks["bg_done"]
    # the background stream paused and went on: the same text, nothing cut, nothing repeated
    assert text(bg_events) == alone
    finish = bg_events[-1]
    assert isinstance(finish, Finish) and finish.timings.suspensions == 1 and finish.timings.paused_ms > 0
    assert seen["state"] is SlotState.BUSY
    assert seen["suspended"] is not None and seen["suspended"]["priority"] == "background"  # type: ignore[index]
    assert seen["serving"] is not None and seen["serving"]["priority"] == "interactive"  # type: ignore[index]
    sched = sup.status()["scheduling"]
    assert sched["suspension"]["suspensions"] == 1 and sched["suspension"]["resumes"] == 1
    assert sched["suspension"]["paused_ms_total"] > 0
    assert sched["suspended"] is None and sup.state is SlotState.READY


async def test_normal_requests_do_not_suspend_and_wait_instead(make_supervisor: MakeSupervisor, world: World) -> None:
    sup = await started(make_supervisor())
    world.token_s = 0.01
    bg = asyncio.create_task(run(sup, pieces("bg", 30), B))
    await streaming(sup)
    normal = await asyncio.wait_for(run(sup, pieces("n", 2), N, deadline=5), 5)
    assert bg.done()  # it waited for the whole background stream
    assert (await bg)[-1].timings.suspensions == 0  # type: ignore[union-attr]
    assert isinstance(normal[-1], Finish)
    assert sup.status()["scheduling"]["suspension"]["suspensions"] == 0


async def test_a_refused_suspension_leaves_the_interactive_request_to_its_deadline(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor())
    world.token_s = 0.02
    world.refuse_suspend = "the state needs 90 MB, over the 48 MB reserved"
    bg = asyncio.create_task(run(sup, pieces("bg", 50), B))
    await streaming(sup)
    with pytest.raises(ServiceUnavailable) as busy:
        await run(sup, pieces("voice", 2), I, deadline=0.3)
    assert busy.value.kind is Failure.BUSY
    suspension = sup.status()["scheduling"]["suspension"]
    assert suspension["refusals"] == 1 and suspension["suspensions"] == 0
    assert suspension["last_refusal"] == world.refuse_suspend
    bg_events = await asyncio.wait_for(bg, 10)
    assert text(bg_events) == "".join(f"bg{i} " for i in range(50))


async def test_suspension_off_in_admission_means_interactive_requests_wait(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor(suspend=False))
    world.token_s = 0.01
    bg = asyncio.create_task(run(sup, pieces("bg", 20), B))
    await streaming(sup)
    voice = await asyncio.wait_for(run(sup, pieces("voice", 2), I, deadline=5), 5)
    assert bg.done() and isinstance(voice[-1], Finish)
    assert sup.status()["scheduling"]["suspension"]["suspensions"] == 0


async def test_a_worker_killed_while_a_generation_is_suspended_ends_both_cleanly(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor())
    world.token_s = 0.01
    bg = asyncio.create_task(run(sup, pieces("bg", 200), B))
    await streaming(sup)
    world.token_s = 0.05
    voice = asyncio.create_task(run(sup, pieces("voice", 20), I, deadline=2))
    await until(lambda: sup.queue.suspended is not None)
    await world.workers[-1].kill()
    bg_events = await asyncio.wait_for(bg, 5)  # never a hang
    assert isinstance(bg_events[-1], ErrorEvent) and bg_events[-1].kind is Failure.WORKER_CRASHED
    voice_events = await asyncio.wait_for(voice, 5)
    # killed before its first token it is retried on a fresh worker; after it, it ends with the crash
    assert isinstance(voice_events[-1], ErrorEvent | Finish)
    # the slot recovers: the next request loads a fresh worker and is answered
    world.token_s = 0.0
    after = await asyncio.wait_for(run(sup, pieces("after", 2), I), 10)
    assert isinstance(after[-1], Finish) and sup.queue.suspended is None


async def test_a_background_client_that_leaves_while_suspended_frees_its_place(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor())
    world.token_s = 0.01
    got: list[Event] = []

    async def background() -> None:
        async with contextlib.aclosing(sup.generate("a", pieces("bg", 200), None, B)) as events:
            async for event in events:
                got.append(event)

    bg = asyncio.create_task(background())
    await until(lambda: len(got) >= 3)
    world.token_s = 0.03
    voice = asyncio.create_task(run(sup, pieces("voice", 10), I, deadline=2))
    await until(lambda: sup.queue.suspended is not None)
    bg.cancel()  # the background client disconnects while paused (aiohttp cancels its handler)
    with contextlib.suppress(asyncio.CancelledError):
        await bg
    assert sup.queue.suspended is None
    voice_events = await asyncio.wait_for(voice, 5)
    assert isinstance(voice_events[-1], Finish)
    await until(lambda: sup.state is SlotState.READY)
    assert isinstance((await run(sup, pieces("next", 2), N))[-1], Finish)


async def test_a_generation_paused_for_the_starvation_bound_then_finishes_unpaused(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor(starvation="300ms"))
    world.token_s = 0.01
    bg = asyncio.create_task(run(sup, pieces("bg", 40), B))
    await streaming(sup)
    # voice turns of ~100 ms each, one after the other for a second: far longer than the bound
    voice: list[asyncio.Task[list[Event]]] = []
    for i in range(10):
        voice.append(asyncio.create_task(run(sup, pieces(f"voice{i}", 10), I, deadline=30)))
        await asyncio.sleep(0.1)
    events = await asyncio.wait_for(bg, 20)
    await asyncio.wait_for(asyncio.gather(*voice), 20)
    finish = events[-1]
    assert isinstance(finish, Finish) and text(events) == "".join(f"bg{i} " for i in range(40))
    # paused once, resumed at the bound, then left to finish: not paused again after every token
    assert finish.timings.suspensions == 1


async def test_one_worker_death_under_a_suspension_counts_once_towards_the_crash_loop(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = await started(make_supervisor())
    world.token_s = 0.01
    bg = asyncio.create_task(run(sup, pieces("bg", 200), B))
    await streaming(sup)
    world.token_s = 0.05
    voice = asyncio.create_task(run(sup, pieces("voice", 40), I, deadline=2))
    await until(lambda: sup.queue.suspended is not None)
    await asyncio.sleep(0.12)  # the interactive request has streamed: its crash is not retried
    await world.workers[-1].kill()
    await asyncio.wait_for(asyncio.gather(bg, voice), 10)
    # two streams ended with the one death: one crash on the record, no crash-loop back-off
    assert len(sup.stats["a"].crashes) == 1
    assert "a" not in sup.failures
