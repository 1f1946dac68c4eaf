"""Entry point of the worker process: ``python -m zoe_edge.worker --socket PATH``.

The process starts without a model (so the daemon can keep a spare one warm), listens on a unix
socket, prints ``READY`` on stdout, and then serves one connection at a time. It loads at most one
model in its lifetime: unloading means the process exits, which is the only way to be sure
llama.cpp has returned every byte (and every GPU buffer) to the system.

One exception to "one connection at a time": a generation the daemon suspends
(:mod:`zoe_edge.worker.suspension`) stays open while the connections queued behind it are
served, one at a time, from inside its token loop; then it goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, TextDelta, event_to_wire
from zoe_edge.worker import llama_compat
from zoe_edge.worker.protocol import LoadSpec, ProtocolError, encode_frame, recv_frame
from zoe_edge.worker.suspension import Ops, Outcome, Suspender, WorkerExit, serve_until_resumed

log = logging.getLogger("zoe_edge.worker")


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the daemon dies, so no orphan keeps a model in memory."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def coalesce(events: Iterator[Event], interval: float) -> Iterator[Event]:
    """Merge text deltas that arrive within ``interval`` seconds of the last one sent.

    On a two-core board every wake-up of the daemon and the client steals time from llama.cpp's
    threads; merging fast tokens (a 135M model makes one every 7 ms) into one frame per ``interval``
    removes most of those wake-ups. The first token always goes out at once, so time to first token
    is unchanged; a slow model (one token per ``interval`` or slower) streams token by token.
    """
    held: list[str] = []
    last_sent = 0.0
    for event in events:
        if isinstance(event, TextDelta):
            now = time.monotonic()
            if now - last_sent < interval:
                held.append(event.text)
                continue
            if held:
                event = TextDelta("".join(held) + event.text)
                held.clear()
            last_sent = now
            yield event
            continue
        if held:
            yield TextDelta("".join(held))
            held.clear()
        yield event
    if held:
        yield TextDelta("".join(held))


class Worker:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.engine: Any = None  # zoe_edge.worker.engine.Engine once loaded
        self.llama_log = llama_compat.LlamaLog()
        self._server: socket.socket | None = None
        self._parent = os.getppid()

    def serve(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        server.bind(self.socket_path)
        server.listen(16)
        server.settimeout(1.0)
        self._server = server
        parent = self._parent
        print(f"READY {os.getpid()}", flush=True)
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if os.getppid() != parent:
                    log.warning("daemon went away; worker exiting")
                    return
                continue
            conn.settimeout(None)
            with conn:
                if not self._serve_one(conn):
                    return

    def _send(self, conn: socket.socket, payload: dict[str, Any]) -> bool:
        try:
            conn.sendall(encode_frame(payload))
            return True
        except OSError:
            return False

    def _serve_one(self, conn: socket.socket, nested: bool = False) -> bool:
        """Handle one connection; ``False`` means the worker should exit.

        ``nested``: served while a generation is suspended (a generate then cannot be suspended itself).
        """
        try:
            request = recv_frame(conn)
        except (ProtocolError, OSError) as exc:
            log.warning("bad request frame: %s", exc)
            return True
        if request is None:
            return True
        op = request.get("op")
        if op == "ping":
            self._send(conn, {"t": "pong", "loaded": self.engine is not None, "pid": os.getpid()})
        elif op == "load":
            self._load(conn, request)
        elif op == "generate":
            return self._generate(conn, request, nested)
        elif op == "embed":
            self._embed(conn, request)
        elif op == "shutdown":
            self._send(conn, {"t": "bye"})
            return False
        else:
            self._send(conn, {"t": "error", "message": f"unknown op {op!r}", "code": "protocol", "status": 500})
        return True

    def _load(self, conn: socket.socket, request: dict[str, Any]) -> None:
        from zoe_edge.worker.engine import Engine

        if self.engine is not None:
            self._send(conn, {"t": "error", "message": "a model is already loaded", "code": "protocol", "status": 500})
            return
        try:
            spec = LoadSpec.model_validate(request.get("spec"))
            self.engine = Engine(spec, self.llama_log)
        except Exception as exc:
            # llama.cpp reports the details on stderr, which the daemon logs; the message names the cause
            reason = str(exc) or type(exc).__name__
            log.error("load failed: %s", reason)
            self._send(conn, {"t": "error", "message": reason, "code": "model_load_failed", "status": 503})
            return
        from zoe_edge.worker import snapshots

        snapshots.attach(self.engine)  # the long prompts a previous worker of this model left on disk
        self._send(conn, {"t": "loaded", "info": self.engine.info(os.getpid()).model_dump()})

    def _generate(self, conn: socket.socket, request: dict[str, Any], nested: bool = False) -> bool:
        """Stream one generation; ``False`` when the worker should exit (a shutdown came while it was suspended)."""
        if self.engine is None:
            self._send(conn, event_to_wire(ErrorEvent("no model loaded", "protocol", 500)))
            return True
        try:
            req = GenerationRequest.model_validate(request.get("request"))
        except ValidationError as exc:
            self._send(conn, event_to_wire(ErrorEvent(f"invalid request: {exc}", "protocol", 500)))
            return True

        # suspend / resume set flags, anything else (a cancel) or the end of the connection stops it
        ops = Ops(conn)
        ops.start()
        checkpoint = Suspender(self.engine, ops, lambda frame: self._send(conn, frame), self._serve_suspended, nested)
        try:
            interval = float(request.get("coalesce_ms", 0)) / 1000.0
            for event in coalesce(self.engine.generate(req, ops.cancel.is_set, checkpoint), interval):
                if isinstance(event, Finish) and event.reason == "cancelled":
                    log.info("generation cancelled by the daemon after %d tokens", event.usage.completion_tokens)
                wire = event_to_wire(event)
                if isinstance(event, Finish):
                    # the supervisor keeps the latest figures for /admin/status
                    wire["prefix_cache"] = self.engine.prefix_cache.stats()
                if not self._send(conn, wire):
                    ops.cancel.set()
                    break
        except WorkerExit:
            log.warning("the worker ends while a generation is suspended; that generation ends with it")
            message = "the model worker shut down while this generation was suspended"
            self._send(conn, event_to_wire(ErrorEvent(message, "shutting_down", 503)))
            return False
        except Exception as exc:
            log.error("generation failed: %s", traceback.format_exc())
            self._send(conn, event_to_wire(ErrorEvent(f"generation failed: {exc}", "generation_failed", 500)))
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            ops.close()
        return True

    def _serve_suspended(self, ops: Ops) -> Outcome:
        """Serve the connections waiting on our socket until the suspended generation may go on."""
        assert self._server is not None
        return serve_until_resumed(self._server, ops, lambda conn: self._serve_one(conn, nested=True), self._parent)

    def _embed(self, conn: socket.socket, request: dict[str, Any]) -> None:
        from zoe_edge.worker.embedding import embed
        from zoe_edge.worker.engine import RequestRejected

        texts = request.get("texts")
        if self.engine is None or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            why = "no model loaded" if self.engine is None else "texts must be a list of strings"
            self._send(conn, {"t": "error", "message": why, "code": "protocol", "status": 500})
            return
        try:
            result = embed(self.engine, texts, bool(request.get("truncate", False)))
        except RequestRejected as exc:
            self._send(conn, {"t": "error", "message": str(exc), "code": exc.code, "status": 400})
            return
        except Exception as exc:
            log.error("embedding failed: %s", traceback.format_exc())
            self._send(
                conn, {"t": "error", "message": f"embedding failed: {exc}", "code": "server_error", "status": 500}
            )
            return
        self._send(conn, {"t": "embedded", **result.model_dump()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zoe-edge-worker", description="zoe-edge model worker (started by the daemon)"
    )
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    args = parser.parse_args(argv)
    # before anything else: a release without what we call would otherwise fail mid-request; the
    # check also imports llama.cpp, so the first load does not pay for that on the critical path
    compat = llama_compat.check()
    if not compat.ok:
        # one line: the daemon quotes the last lines of our stderr when we exit before READY
        print(f"zoe-edge worker cannot start: {compat.message}", file=sys.stderr, flush=True)
        return 3
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    worker = Worker(args.socket)
    try:
        worker.serve()
    finally:
        # a clean end (the shutdown op, SIGTERM on a swap or unload) keeps the long prompts for the next worker
        from zoe_edge.worker import snapshots

        snapshots.persist(worker.engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
