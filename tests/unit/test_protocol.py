"""The daemon <-> worker frame protocol: both the blocking and the asyncio side."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from zoe_edge.worker import protocol
from zoe_edge.worker.protocol import LoadSpec, ProtocolError, encode_frame, read_frame, recv_frame

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
