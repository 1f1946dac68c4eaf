"""The daemon <-> worker contract: length-prefixed JSON frames over a unix socket.

Each connection carries one operation: the daemon sends a request frame (``{"op": ...}``) and
reads reply frames until a terminal one. For ``generate`` the replies are canonical events (see
:func:`zoe_edge.canonical.event_to_wire`); closing the connection, or sending ``{"op": "cancel"}``,
stops the generation at the next token. For ``embed`` the one reply is ``{"t": "embedded", ...}``
(:class:`Embedded`) or ``{"t": "error", ...}``.

Suspending a generation (issue 18; :mod:`zoe_edge.worker.suspension`, :mod:`zoe_edge.worker.control`).
While a ``generate`` streams, the daemon may send on the same connection:

* ``{"op": "suspend"}``: pause at the next token boundary. The worker answers, between two event
  frames, ``{"t": "suspended", "tokens": N, "state_bytes": B, "save_ms": x}`` (N KV cells saved,
  B bytes of state, saved in x ms) or ``{"t": "suspend_refused", "reason": "..."}`` (suspension
  off, the state over ``LoadSpec.suspend_bytes``, a generation already suspended) and streams on.
  Once suspended it serves the other connections on its socket, one at a time (``ping``,
  ``generate``, ``embed``; ``load`` is refused; ``shutdown`` ends the suspended generation with an
  ``error`` frame, code ``shutting_down``, and then the worker).
* ``{"op": "resume"}``: restore and go on; the worker answers ``{"t": "resumed", "restore_ms": y,
  "paused_ms": z}`` (z from the start of the save to the end of the restore) and the event frames
  continue where they stopped. A resume that arrives before the worker reached a token boundary
  withdraws the pending suspend: no frames at all. A resume with nothing to resume is ignored.
* ``{"op": "cancel"}``, any other frame, or the end of the connection: cancel, as always; while
  suspended the generation ends once the request being served meanwhile (if any) has finished.

The ``finish`` frame of a generation that was suspended carries ``suspensions``, ``paused_ms`` and
``suspend_cost_ms`` in its timings, and its ``predicted_ms`` leaves the paused time out.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class ProtocolError(Exception):
    pass


# the generate connection's suspension ops (daemon -> worker) and answers (worker -> daemon)
SUSPEND_OPS = frozenset({"suspend", "resume"})
SUSPEND_FRAMES = frozenset({"suspended", "suspend_refused", "resumed"})


class LoadSpec(BaseModel):
    """Everything the worker needs to load one model; built by the supervisor from the registry."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    n_ctx: int = Field(ge=16)
    n_batch: int = Field(ge=1)
    n_threads: int = Field(ge=1)
    n_gpu_layers: int = Field(ge=0)
    chat_format: str = "auto"
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    tool_format: str = "auto"
    # KV snapshots of long prompt prefixes kept across interleaved requests (0 turns them off);
    # the supervisor's plan sizes it from the memory the model leaves spare
    prefix_cache_bytes: int = Field(default=0, ge=0)
    prefix_cache_min_tokens: int = Field(default=256, ge=1)
    # the most a suspended generation's saved state may take (0: the worker never suspends); from the plan
    suspend_bytes: int = Field(default=0, ge=0)
    # "only": an embedding context (no generation); "also": a generative one that also pools embeddings
    embeddings: Literal["none", "only", "also"] = "none"
    pooling: Literal["mean", "cls", "last"] | None = None  # None: the GGUF's own, mean when it names none


class ModelInfo(BaseModel):
    """What the worker reports after a successful load."""

    name: str
    n_ctx: int
    n_ctx_train: int
    n_params: int
    size_bytes: int
    n_gpu_layers: int
    chat_template_source: str
    tool_format: str = "generic"
    load_ms: float
    pid: int


class Embedded(BaseModel):
    """The worker's answer to ``{"op": "embed", "texts": [...], "truncate": bool}``: one vector per text."""

    vectors: list[list[float]]  # pooled and L2-normalised, in the order of the texts
    prompt_tokens: int
    n_embd: int
    embed_ms: float


def encode_frame(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME} byte limit")
    return HEADER.pack(len(body)) + body


def _decode_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolError("frame is not a JSON object")
    return payload


def _check_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds the {MAX_FRAME} byte limit")
    return int(length)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or ``None`` on a clean end of stream between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    try:
        body = await reader.readexactly(_check_length(header))
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None
    return _decode_body(body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            if chunks:
                raise ProtocolError("connection closed inside a frame")
            return None
        chunks += chunk
    return bytes(chunks)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """Blocking twin of :func:`read_frame` for the worker side."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, _check_length(header))
    if body is None:
        raise ProtocolError("connection closed inside a frame")
    return _decode_body(body)
