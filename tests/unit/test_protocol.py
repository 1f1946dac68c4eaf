"""The daemon <-> worker frame protocol: both the blocking and the asyncio side."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from pydantic import ValidationError

from zoe_edge.worker import protocol
from zoe_edge.worker.client import control_frame
from zoe_edge.worker.control import GenerationControl, Resumed, Suspended
from zoe_edge.worker.protocol import LoadSpec, ProtocolError, encode_frame, read_frame, recv_frame
from zoe_edge.worker.suspension import Ops

PAYLOADS = [
    {"op": "ping"},
    {"op": "generate", "request": {"messages": [{"role": "user", "content": "héllo ✓ 日本語 🙂"}]}},
    {"t": "text", "text": ""},
    {"nested": {"list": [1, 2.5, None, True, "x" * 10_000]}},
]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(5)  # a protocol bug must fail the test, not hang it
    yield a, b
    a.close()
    b.close()


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_encode_frame_layout() -> None:
    frame = encode_frame({"a": "é"})
    body = json.dumps({"a": "é"}, ensure_ascii=False, separators=(",", ":")).encode()
    assert frame[:4] == struct.pack(">I", len(body))
    assert frame[4:] == body


def test_encode_frame_rejects_oversize(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME", 100)
    encode_frame({"x": "a" * 80})  # under the limit
    with pytest.raises(ProtocolError, match="exceeds the 100 byte limit"):
        encode_frame({"x": "a" * 200})


def test_socket_roundtrip(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(b"".join(encode_frame(p) for p in PAYLOADS))
    a.shutdown(socket.SHUT_WR)
    assert [recv_frame(b) for _ in PAYLOADS] == PAYLOADS
    assert recv_frame(b) is None  # clean end of stream between frames


def test_socket_frame_split_across_sends(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    frame = encode_frame(PAYLOADS[1])
    for i in range(0, len(frame), 7):
        a.sendall(frame[i : i + 7])
    assert recv_frame(b) == PAYLOADS[1]


def test_socket_clean_eof(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.shutdown(socket.SHUT_WR)
    assert recv_frame(b) is None


@pytest.mark.parametrize(
    "data",
    [
        encode_frame({"op": "ping"})[:2],  # inside the header
        encode_frame({"op": "ping"})[:-1],  # inside the body
        struct.pack(">I", 100) + b"{}",
    ],
    ids=["header", "body", "short-body"],
)
def test_socket_truncated_frame(pair: tuple[socket.socket, socket.socket], data: bytes) -> None:
    a, b = pair
    a.sendall(data)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="closed inside a frame"):
        recv_frame(b)


def test_socket_oversize_length_rejected_before_reading_body(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", protocol.MAX_FRAME + 1))  # no body follows: it must not wait for one
    with pytest.raises(ProtocolError, match="exceeds"):
        recv_frame(b)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"3", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b'{"a": "\xff"}', "not JSON"),
    ],
)
def test_socket_bad_body(pair: tuple[socket.socket, socket.socket], body: bytes, match: str) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match=match):
        recv_frame(b)


async def test_stream_roundtrip() -> None:
    reader = _reader(b"".join(encode_frame(p) for p in PAYLOADS))
    assert [await read_frame(reader) for _ in PAYLOADS] == PAYLOADS
    assert await read_frame(reader) is None


async def test_stream_waits_for_the_rest_of_a_frame() -> None:
    frame = encode_frame({"op": "cancel"})
    reader = _reader(frame[:6], eof=False)
    pending = asyncio.ensure_future(read_frame(reader))
    await asyncio.sleep(0)
    assert not pending.done()
    reader.feed_data(frame[6:])
    assert await asyncio.wait_for(pending, 5) == {"op": "cancel"}


async def test_stream_clean_eof() -> None:
    assert await read_frame(_reader(b"")) is None


async def test_stream_truncated_header() -> None:
    with pytest.raises(ProtocolError, match="inside a frame header"):
        await read_frame(_reader(b"\x00\x00"))


async def test_stream_truncated_body() -> None:
    with pytest.raises(ProtocolError, match="closed inside a frame"):
        await read_frame(_reader(encode_frame({"op": "ping"})[:-2]))


async def test_stream_oversize_length() -> None:
    reader = _reader(struct.pack(">I", protocol.MAX_FRAME + 1), eof=False)
    with pytest.raises(ProtocolError, match="exceeds"):
        await asyncio.wait_for(read_frame(reader), 5)


@pytest.mark.parametrize("body", [b"[1]", b"42", b'"s"', b"{oops", b"\xff\xfe"])
async def test_stream_non_object_json(body: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"not (a )?JSON"):
        await read_frame(_reader(struct.pack(">I", len(body)) + body))


def test_load_spec_validation() -> None:
    spec = LoadSpec(name="m", path="/m.gguf", n_ctx=2048, n_batch=512, n_threads=4, n_gpu_layers=0)
    assert LoadSpec.model_validate(json.loads(json.dumps(spec.model_dump()))) == spec
    with pytest.raises(ValidationError):
        LoadSpec(name="m", path="/m.gguf", n_ctx=2048, n_batch=512, n_threads=4, n_gpu_layers=-1)
    with pytest.raises(ValidationError):
        LoadSpec.model_validate({**spec.model_dump(), "surprise": 1})


# --- suspending a generation: the ops the worker reads, the answers the daemon reads ---------------


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the watcher did not get there"
        time.sleep(0.005)


@pytest.fixture
def ops(pair: tuple[socket.socket, socket.socket]) -> Iterator[tuple[Ops, socket.socket]]:
    daemon, worker = pair
    watched = Ops(worker)
    watched.start()
    yield watched, daemon
    worker.shutdown(socket.SHUT_RDWR)
    watched.close()


def test_suspend_then_resume_before_a_token_boundary_withdraws(ops: tuple[Ops, socket.socket]) -> None:
    watched, daemon = ops
    daemon.sendall(encode_frame({"op": "suspend"}))
    _wait(lambda: watched.pending)
    daemon.sendall(encode_frame({"op": "resume"}))
    _wait(lambda: not watched.pending)
    assert not watched.claim(accept=True)  # the next token boundary finds nothing to do
    assert not watched.cancel.is_set()


def test_a_claimed_suspension_ends_on_resume_and_wakes_the_worker(ops: tuple[Ops, socket.socket]) -> None:
    watched, daemon = ops
    daemon.sendall(encode_frame({"op": "suspend"}))
    _wait(lambda: watched.pending)
    assert watched.claim(accept=True)
    assert watched.outcome() is None
    daemon.sendall(encode_frame({"op": "suspend"}))  # already suspended: nothing new is pending
    daemon.sendall(encode_frame({"op": "resume"}))
    assert select.select([watched.waker], [], [], 5.0)[0], "no wake-up"
    watched.drain()
    _wait(lambda: watched.outcome() == "resume")  # read once: the suspension is over
    assert watched.outcome() is None and not watched.pending


def test_a_refused_suspension_leaves_a_later_resume_without_effect(ops: tuple[Ops, socket.socket]) -> None:
    watched, daemon = ops
    daemon.sendall(encode_frame({"op": "suspend"}))
    _wait(lambda: watched.pending)
    assert watched.claim(accept=False)
    daemon.sendall(encode_frame({"op": "resume"}) + encode_frame({"op": "ping"}))
    _wait(watched.cancel.is_set)  # any op but suspend and resume cancels, as a cancel always did
    assert watched.outcome() == "cancel"


@pytest.mark.parametrize("ending", [b"", b"\x00\x00\x00\x02{x"])
def test_the_end_of_the_connection_or_a_broken_frame_cancels(ops: tuple[Ops, socket.socket], ending: bytes) -> None:
    watched, daemon = ops
    daemon.sendall(encode_frame({"op": "suspend"}) + ending)
    if not ending:
        daemon.shutdown(socket.SHUT_WR)
    _wait(watched.cancel.is_set)
    assert select.select([watched.waker], [], [], 5.0)[0]


async def test_the_daemon_hands_suspension_frames_to_the_control() -> None:
    control = GenerationControl()
    sent: list[str] = []
    control.attach(sent.append)
    control.mark_started()
    pending = asyncio.ensure_future(control.suspend(timeout=5.0))
    await asyncio.sleep(0)
    assert sent == ["suspend"]
    frame = {"t": "suspended", "tokens": 512, "state_bytes": 11_796_480, "save_ms": 9.5}
    assert control_frame(frame, control)
    assert await pending == Suspended(512, 11_796_480, 9.5)
    assert control.suspended is not None and not control.suspendable
    assert control_frame({"t": "resumed", "restore_ms": 3.25, "paused_ms": 840.0}, control)
    assert control.last_resumed == Resumed(3.25, 840.0) and control.suspended is None
    assert control_frame({"t": "suspend_refused", "reason": "too big"}, control)
    assert control.refusal == "too big"
    assert not control_frame({"t": "text", "text": "hi"}, control)  # an event, for the caller
    assert control_frame({"t": "resumed"}, control)  # malformed: logged and refused, never raised
    assert control.refusal == "malformed resumed frame"
    assert control_frame({"t": "suspended", "tokens": 1, "state_bytes": 2, "save_ms": 3}, None)  # nobody asked
    assert {"suspended", "suspend_refused", "resumed"} == protocol.SUSPEND_FRAMES
