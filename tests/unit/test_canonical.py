"""The canonical request and event stream: wire form, error mapping, sampling defaults, timings."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from zoe_edge.canonical import (
    ErrorEvent,
    Event,
    Finish,
    GenerationRequest,
    Sampling,
    TextDelta,
    Timings,
    Usage,
    event_from_wire,
    event_to_wire,
)
from zoe_edge.errors import (
    Forbidden,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    ZoeError,
)
from zoe_edge.worker.protocol import encode_frame

EVENTS: list[Event] = [
    TextDelta("hello"),
    TextDelta(""),
    TextDelta("日本語 🙂\n"),
    Finish("stop", Usage(12, 5, 4), Timings(prompt_ms=12.5, predicted_ms=80.25, load_ms=300.0)),
    Finish("length", Usage(1, 512)),
    Finish("cancelled", Usage(3, 0)),
    ErrorEvent("the prompt is too long", "context_length_exceeded", 400),
    ErrorEvent("boom"),
]


@pytest.mark.parametrize("event", EVENTS, ids=repr)
def test_event_wire_roundtrip(event: Event) -> None:
    wire = event_to_wire(event)
    assert event_from_wire(wire) == event
    # and through the real IPC encoding (JSON), as the worker sends it
    decoded = json.loads(encode_frame(wire)[4:])
    assert event_from_wire(decoded) == event


def test_wire_shapes() -> None:
    assert event_to_wire(TextDelta("x")) == {"t": "text", "text": "x"}
    finish = event_to_wire(Finish("stop", Usage(2, 3, 1), Timings(1.0, 2.0, 0.0)))
    assert finish == {
        "t": "finish",
        "reason": "stop",
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "cached_tokens": 1},
        "timings": {"prompt_ms": 1.0, "predicted_ms": 2.0, "load_ms": 0.0},
    }
    assert event_to_wire(ErrorEvent("m", "c", 503)) == {"t": "error", "message": "m", "code": "c", "status": 503}


def test_error_frame_defaults() -> None:
    assert event_from_wire({"t": "error", "message": "x"}) == ErrorEvent("x", "worker_failed", 500)


@pytest.mark.parametrize("frame", [{"t": "token", "text": "x"}, {}, {"text": "x"}])
def test_unknown_frame_type(frame: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="unknown event frame type"):
        event_from_wire(frame)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, ModelNotFound),
        (413, PayloadTooLarge),
        (503, ServiceUnavailable),
        (500, ZoeError),
    ],
)
def test_error_event_as_exception(status: int, cls: type[ZoeError]) -> None:
    exc = ErrorEvent("what happened", "some_code", status).as_exception()
    assert type(exc) is cls
    assert exc.status == status
    assert exc.message == "what happened"
    assert str(exc) == "what happened"
    assert exc.code == "some_code"
    assert exc.retry_after == (5.0 if status == 503 else None)


def test_error_event_default_is_a_server_error() -> None:
    exc = ErrorEvent("worker died").as_exception()
    assert exc.status == 500
    assert exc.type == "server_error"
    assert exc.code == "worker_failed"


def test_usage_total() -> None:
    assert Usage(7, 5, 3).total_tokens == 12


def test_sampling_merged_over_prefers_request_values() -> None:
    defaults = Sampling(temperature=0.7, top_p=0.95, top_k=40, min_p=0.05, seed=None)
    request = Sampling(temperature=0.0, top_k=0, seed=0)
    merged = request.merged_over(defaults)
    # falsy but set values (0.0, 0) win over the defaults: only None means "unset"
    assert merged.temperature == 0.0
    assert merged.top_k == 0
    assert merged.seed == 0
    assert merged.top_p == 0.95
    assert merged.min_p == 0.05
    assert merged.repeat_penalty is None
    # neither input is changed
    assert defaults.temperature == 0.7 and defaults.seed is None
    assert request.top_p is None


def test_sampling_merged_over_empty_request_is_defaults() -> None:
    defaults = Sampling(temperature=0.3, repeat_penalty=1.1)
    assert Sampling().merged_over(defaults) == defaults


@pytest.mark.parametrize(
    "fields",
    [{"temperature": 2.5}, {"temperature": -0.1}, {"top_p": 1.5}, {"repeat_penalty": 0}, {"min_p": -1}, {"tfs": 1}],
)
def test_sampling_bounds(fields: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Sampling.model_validate(fields)


def test_timings_per_second() -> None:
    timings = Timings(prompt_ms=200.0, predicted_ms=1000.0)
    rates = timings.per_second(Usage(prompt_tokens=10, completion_tokens=50, cached_tokens=4))
    assert rates == {
        "prompt_n": 6,  # cached tokens were not evaluated
        "prompt_ms": 200.0,
        "prompt_per_second": 30.0,
        "predicted_n": 50,
        "predicted_ms": 1000.0,
        "predicted_per_second": 50.0,
    }


def test_timings_per_second_zero_time_and_rounding() -> None:
    rates = Timings(prompt_ms=0.0, predicted_ms=3.0).per_second(Usage(5, 1))
    assert rates["prompt_per_second"] == 0.0
    assert rates["predicted_per_second"] == 333.33
    assert Timings(prompt_ms=1.23456).per_second(Usage(1, 0))["prompt_ms"] == 1.235


def test_generation_request_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({"model": "m", "prompt": "x", "temprature": 1})
    with pytest.raises(ValidationError):
        GenerationRequest(model="m", prompt="x", max_tokens=0)


def test_a_suspended_finish_carries_its_pause_and_an_unpaused_one_stays_small() -> None:
    paused = Finish("length", Usage(3, 300), Timings(10.0, 900.0, suspensions=2, paused_ms=450.0, suspend_cost_ms=3.5))
    wire = event_to_wire(paused)
    assert wire["timings"]["suspensions"] == 2 and wire["timings"]["paused_ms"] == 450.0
    assert event_from_wire(wire) == paused
    plain = event_to_wire(Finish("stop", Usage(3, 4), Timings(1.0, 2.0)))
    assert set(plain["timings"]) == {"prompt_ms", "predicted_ms", "load_ms"}
    assert event_from_wire(plain).timings.suspensions == 0  # type: ignore[union-attr]
