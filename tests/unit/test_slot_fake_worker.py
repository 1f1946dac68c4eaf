"""The real Supervisor (admission, scheduler loop, loads, swaps, retries) driven by in-process fake workers.

The fakes implement the worker client's interface for real (start, load, stream, die, stop) with
no model and no subprocess; the GGUF header the planner reads is the SmolLM2 file's, which costs
a header read, never a load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from tests.fakes.worker import World
from tests.unit.conftest import MakeSupervisor
from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, Message, TextDelta
from zoe_edge.errors import Failure, ModelLoadFailed, ServiceUnavailable
from zoe_edge.supervisor import InvalidTransition, SlotState, Supervisor
from zoe_edge.supervisor.state import TRANSITIONS, SlotMachine

STATUS_KEYS = {"profile", "memory", "slot", "queue", "scheduling", "swaps", "failures", "models", "last_error"}
SLOT_KEYS = {
    "state",
    "model",
    "since",
    "pid",
    "worker_rss_mb",
    "info",
    "n_ctx",
    "context",
    "plan",
    "busy_with",
    "idle_unload_in_s",
    "spare_worker",
    "prefix_cache",
}
SWAP_KEYS = {"at", "from", "to", "duration_ms", "llama_load_ms", "gpu_layers", "n_ctx", "resize", "reason"}


def request(model: str) -> GenerationRequest:
    return GenerationRequest(model=model, messages=[Message(role="user", content="hi")], max_tokens=4)


async def collect(sup: Supervisor, model: str, deadline: float | None = None) -> list[Event]:
    async with contextlib.aclosing(sup.generate(model, request(model), deadline)) as events:
        return [event async for event in events]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true")


@pytest.fixture
async def supervisor(make_supervisor: MakeSupervisor) -> Supervisor:
    sup = make_supervisor()
    await sup.start()
    return sup


async def test_load_makes_the_slot_ready(supervisor: Supervisor, world: World) -> None:
    plan = await supervisor.load("a")
    assert plan.fits
    assert supervisor.state is SlotState.READY and supervisor.loaded == "a"
    status = supervisor.status()
    assert set(status) == STATUS_KEYS and set(status["slot"]) == SLOT_KEYS
    assert status["slot"]["state"] == "ready" and status["slot"]["pid"] == world.workers[0].pid
    assert status["slot"]["info"]["name"] == "a" and status["slot"]["n_ctx"] == 2048
    assert [(t.before, t.after) for t in supervisor.loader.machine.history] == [
        (SlotState.UNLOADED, SlotState.LOADING),
        (SlotState.LOADING, SlotState.READY),
        (SlotState.READY, SlotState.BUSY),  # load() holds the slot for a moment like any request
        (SlotState.BUSY, SlotState.READY),
    ]


async def test_generate_streams_and_releases(supervisor: Supervisor) -> None:
    events = await collect(supervisor, "a")
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", " there"]
    assert isinstance(events[-1], Finish)
    assert supervisor.state is SlotState.READY
    assert supervisor.status()["models"]["a"]["requests"] == 1
    assert supervisor.status()["slot"]["prefix_cache"] == {"entries": 0}
    assert supervisor.last_tokens_per_s is not None


async def test_swap_produces_a_swap_record(supervisor: Supervisor, world: World) -> None:
    heard: list[dict[str, Any]] = []
    supervisor.swap_listeners.append(heard.append)
    await collect(supervisor, "a")
    first = world.workers[0]
    events = await collect(supervisor, "b")
    assert isinstance(events[-1], Finish)
    assert supervisor.loaded == "b" and not first.alive  # the old worker went, its memory with it
    assert world.loaded() == ["a", "b"]
    swaps = supervisor.status()["swaps"]
    assert [(s["from"], s["to"], s["resize"]) for s in swaps] == [(None, "a", False), ("a", "b", False)]
    assert all(set(s) == SWAP_KEYS for s in swaps)
    assert heard == swaps == supervisor.swaps
    assert supervisor.swap_records[-1].previous == "a" and supervisor.swap_records[-1].model == "b"
    steps = [(t.before, t.after) for t in supervisor.loader.machine.history]
    assert (SlotState.READY, SlotState.UNLOADING) in steps and (SlotState.UNLOADING, SlotState.UNLOADED) in steps


async def test_worker_that_dies_before_the_first_token_is_retried_once(supervisor: Supervisor, world: World) -> None:
    await supervisor.load("a")
    world.deaths_before_first_token = 1
    events = await collect(supervisor, "a")
    assert not any(isinstance(e, ErrorEvent) for e in events)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", " there"]
    assert len(world.workers) == 2 and not world.workers[0].alive and world.workers[1].alive
    assert supervisor.status()["slot"]["pid"] == world.workers[1].pid
    assert len(supervisor.stats["a"].crashes) == 1  # the crash counts towards the crash-loop limit
    assert supervisor.last_error is not None and "SIGKILL" in supervisor.last_error


async def test_a_second_death_is_reported(supervisor: Supervisor, world: World) -> None:
    world.deaths_before_first_token = 2
    events = await collect(supervisor, "a")
    assert len(events) == 1 and isinstance(events[0], ErrorEvent)
    assert events[0].kind is Failure.WORKER_CRASHED
    assert len(supervisor.stats["a"].crashes) == 2


async def test_busy_when_the_slot_is_taken_and_the_deadline_short(
    make_supervisor: MakeSupervisor, world: World
) -> None:
    sup = make_supervisor(max_queue=1)
    await sup.start()
    world.hold = asyncio.Event()
    stream = sup.generate("a", request("a"))
    try:
        first = await stream.__anext__()  # the slot is now held, mid-stream
        assert isinstance(first, TextDelta) and sup.state is SlotState.BUSY
        with pytest.raises(ServiceUnavailable) as busy:
            await collect(sup, "a", deadline=0.5)  # nothing measured yet: a turn is taken to last 5 s
        assert busy.value.kind is Failure.BUSY and (busy.value.retry_after or 0) > 0.5
        queued = asyncio.create_task(collect(sup, "a", deadline=60))
        await until(lambda: bool(sup.queue.waiting))
        with pytest.raises(ServiceUnavailable) as full:
            await collect(sup, "a", deadline=60)
        assert full.value.kind is Failure.QUEUE_FULL
        assert sup.status()["queue"] == {
            "length": 1,
            "by_model": {"a": 1},
            "by_priority": {"interactive": 0, "normal": 1, "background": 0},
        }
        world.hold.set()
        rest = [event async for event in stream]
        assert isinstance(rest[-1], Finish)
        assert isinstance((await asyncio.wait_for(queued, 5))[-1], Finish)
    finally:
        world.hold.set()
        await stream.aclose()


async def test_a_failed_load_backs_off_with_its_kind(supervisor: Supervisor, world: World) -> None:
    world.broken.add("b")
    with pytest.raises(ModelLoadFailed) as failed:
        await collect(supervisor, "b")
    assert failed.value.kind is Failure.MODEL_LOAD_FAILED
    assert supervisor.state is SlotState.FAILED and supervisor.model == "b"
    assert supervisor.status()["failures"]["b"]["count"] == 1
    with pytest.raises(ModelLoadFailed) as again:  # inside the back-off: refused at admission, no new worker
        await collect(supervisor, "b")
    assert again.value.kind is Failure.MODEL_LOAD_FAILED and len(world.workers) == 1
    events = await collect(supervisor, "a")  # another model loads from the failed slot
    assert isinstance(events[-1], Finish) and supervisor.status()["slot"]["state"] == "ready"


async def test_unload_empties_the_slot(supervisor: Supervisor, world: World) -> None:
    await supervisor.load("a")
    assert await supervisor.unload() == "a"
    assert supervisor.state is SlotState.UNLOADED and supervisor.loaded is None
    assert not world.workers[0].alive


async def test_close_refuses_with_shutting_down(supervisor: Supervisor) -> None:
    await supervisor.close()
    with pytest.raises(ServiceUnavailable) as refused:
        await collect(supervisor, "a")
    assert refused.value.kind is Failure.SHUTTING_DOWN


async def test_an_invalid_transition_on_the_slot_raises(supervisor: Supervisor) -> None:
    with pytest.raises(InvalidTransition, match="unloaded -> busy is not allowed"):
        supervisor.loader.machine.move(SlotState.BUSY, "a test serving from an empty slot")
    assert supervisor.state is SlotState.UNLOADED  # a refused transition changes nothing


def test_the_transition_table() -> None:
    machine = SlotMachine()
    since = machine.since
    machine.move(SlotState.LOADING, "load", model="a")
    assert machine.model == "a" and machine.since >= since
    with pytest.raises(InvalidTransition) as caught:
        machine.move(SlotState.BUSY, "serve before the load finished")
    assert caught.value.current is SlotState.LOADING and caught.value.target is SlotState.BUSY
    assert "internal error" in str(caught.value)
    machine.move(SlotState.READY, "loaded")
    machine.move(SlotState.BUSY, "serve")
    machine.move(SlotState.READY, "done")
    assert machine.history[-1].before is SlotState.BUSY and machine.history[-1].why == "done"
    assert set(TRANSITIONS) == set(SlotState)  # every state says where it may go
    # only a failure may repeat itself (it restarts the back-off); no other state is entered from itself
    assert [s for s in SlotState if s in TRANSITIONS[s]] == [SlotState.FAILED]
