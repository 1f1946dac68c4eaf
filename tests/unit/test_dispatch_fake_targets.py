"""The Dispatcher alone, against fake targets: a scripted local slot and scripted cloud upstreams.

What it must do: try the plan's targets in order before the first event only, pass over a target for
a reason that another target could fix (read from the failure's kind), raise the request's own error
at once, keep local answers local when the key is over its budget, and say why for every target it
passed over.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest

from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, Message, Priority, TextDelta, Usage
from zoe_edge.errors import Failure, InvalidRequest, ServiceUnavailable, TooManyRequests, ZoeError
from zoe_edge.registry import parse_registry
from zoe_edge.routing.dispatch import Dispatcher
from zoe_edge.routing.routes import plan_request

REGISTRY = parse_registry(
    {
        "default": "small",
        "models": {"small": {"file": "/x.gguf", "chat_format": "chatml", "reasoning": "none"}},
        "providers": {
            "cloud": {"type": "openai", "base_url": "https://cloud.invalid/v1"},
            "spare": {"type": "openai", "base_url": "https://spare.invalid/v1"},
        },
        "routes": {
            "edge": {"targets": ["small", "cloud:big", "spare:big"]},
            "cloud-only": {"targets": ["cloud:big"]},
            "alone": {"targets": ["small"]},
        },
    }
)
REQ = GenerationRequest(model="edge", messages=[Message(role="user", content="hi")])
ANSWER: list[Event] = [TextDelta("ok"), Finish("stop", Usage(3, 1))]


def _script(outcome: ZoeError | list[Event]) -> AsyncGenerator[Event, None]:
    async def events() -> AsyncGenerator[Event, None]:
        if isinstance(outcome, ZoeError):
            raise outcome
        for event in outcome:
            yield event

    return events()


class FakeSlot:
    """The supervisor's generate: one scripted outcome per call."""

    def __init__(self, outcome: ZoeError | list[Event]) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str, float | None]] = []
        self.priorities: list[Priority] = []

    def generate(
        self, model: str, req: GenerationRequest, deadline: float | None = None, priority: Priority = Priority.NORMAL
    ) -> Any:
        self.calls.append((model, deadline))
        self.priorities.append(priority)
        return _script(self.outcome)


class FakeUpstream:
    def __init__(self, outcome: ZoeError | list[Event], disabled: str | None = None) -> None:
        self.outcome = outcome
        self.disabled = disabled
        self.calls = 0

    def disabled_reason(self) -> str | None:
        return self.disabled

    def cooling_down(self) -> float | None:
        return None

    def generate(self, model: str, req: GenerationRequest) -> AsyncGenerator[Event, None]:
        self.calls += 1
        return _script(self.outcome)

    async def close(self) -> None:
        return None


def dispatcher(slot: FakeSlot, **upstreams: FakeUpstream) -> Dispatcher:
    return Dispatcher(REGISTRY, slot, upstreams)  # type: ignore[arg-type]


async def run(d: Dispatcher, route: str = "edge", **kw: Any) -> tuple[str, list[Failure], str]:
    dispatched = await d.dispatch(plan_request(REGISTRY, route, REQ), REQ, **kw)
    text = ""
    event = dispatched.first
    while event is not None:
        if isinstance(event, TextDelta):
            text += event.text
        event = await anext(dispatched.events, None)
    return dispatched.served_by.label, [s.kind for s in dispatched.skipped], text


async def test_a_busy_slot_falls_back_and_says_why() -> None:
    slot = FakeSlot(ServiceUnavailable("the local model is busy", code=Failure.BUSY, retry_after=3))
    cloud = FakeUpstream(ANSWER)
    served, kinds, text = await run(dispatcher(slot, cloud=cloud, spare=FakeUpstream(ANSWER)), deadline=0.5)
    assert (served, kinds, text) == ("cloud:big", [Failure.BUSY], "ok")
    assert slot.calls == [("small", 0.5)]  # the client's deadline reaches the slot


async def test_the_request_s_own_error_is_raised_at_once() -> None:
    cloud = FakeUpstream(ANSWER)
    d = dispatcher(FakeSlot(InvalidRequest("prompt too long", code="context_length_exceeded")), cloud=cloud)
    with pytest.raises(InvalidRequest) as err:
        await run(d)
    assert err.value.target == "local:small" and cloud.calls == 0  # another target would not fix it


async def test_a_crash_before_the_first_token_moves_on_and_a_disabled_provider_is_passed_over() -> None:
    slot = FakeSlot([ErrorEvent("killed", Failure.WORKER_CRASHED, 503)])
    d = dispatcher(slot, cloud=FakeUpstream(ANSWER, disabled="no OPENAI_API_KEY"), spare=FakeUpstream(ANSWER))
    served, kinds, _ = await run(d)
    assert served == "spare:big" and kinds == [Failure.WORKER_CRASHED, Failure.PROVIDER_DISABLED]


async def test_once_output_started_a_failure_is_the_stream_s_own_end() -> None:
    slot = FakeSlot([TextDelta("half"), ErrorEvent("killed", Failure.WORKER_CRASHED, 503)])
    cloud = FakeUpstream(ANSWER)
    served, kinds, text = await run(dispatcher(slot, cloud=cloud))
    assert (served, kinds, text, cloud.calls) == ("local:small", [], "half", 0)  # nothing spliced on


async def test_over_budget_keeps_it_local_or_is_a_429_when_only_cloud_serves() -> None:
    slot = FakeSlot(ServiceUnavailable("busy", code=Failure.BUSY))
    d = dispatcher(slot, cloud=FakeUpstream(ANSWER), spare=FakeUpstream(ANSWER))
    with pytest.raises(ServiceUnavailable) as none:
        await run(d, local_only="key 'kid' spent its $1.00 daily cloud budget")
    assert none.value.kind is Failure.NO_TARGET and "daily cloud budget" in none.value.message
    with pytest.raises(TooManyRequests) as err:
        await run(d, route="cloud-only", local_only="key 'kid' spent its budget", retry_after=120)
    assert err.value.kind is Failure.OVER_BUDGET and err.value.retry_after == 120


async def test_a_hot_board_sends_work_elsewhere_only_when_there_is_somewhere_else() -> None:
    d = dispatcher(FakeSlot(ANSWER), cloud=FakeUpstream(ANSWER), spare=FakeUpstream(ANSWER))
    d.thermal = lambda: ("soft", "tj 96 C")
    assert (await run(d))[:2] == ("cloud:big", [Failure.TOO_HOT])
    assert (await run(d, route="alone"))[0] == "local:small"  # nowhere else to go: stay local
    d.thermal = lambda: ("hard", "tj 101 C")
    with pytest.raises(ServiceUnavailable) as err:
        await run(d, route="alone")
    assert err.value.kind is Failure.TOO_HOT


async def test_nothing_could_serve_lists_every_target_with_the_soonest_retry() -> None:
    slot = FakeSlot(ServiceUnavailable("busy", code=Failure.BUSY, retry_after=9))
    overloaded = ServiceUnavailable("overloaded", code=Failure.UPSTREAM_OVERLOADED, retry_after=4)
    d = dispatcher(slot, cloud=FakeUpstream(overloaded), spare=FakeUpstream(overloaded))
    with pytest.raises(ServiceUnavailable) as err:
        await run(d)
    assert err.value.kind is Failure.NO_TARGET and err.value.retry_after == 4
    assert all(label in err.value.message for label in ("local:small", "cloud:big", "spare:big"))


async def test_the_priority_reaches_the_local_slot_and_not_a_cloud_target() -> None:
    slot = FakeSlot(ANSWER)
    await run(dispatcher(slot), priority=Priority.BACKGROUND)
    assert slot.priorities == [Priority.BACKGROUND]
    slot = FakeSlot(ANSWER)
    await run(dispatcher(slot))
    assert slot.priorities == [Priority.NORMAL]  # the supervisor's own default when nobody decided
