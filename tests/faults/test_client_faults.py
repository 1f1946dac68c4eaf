"""Slow and hostile clients, and shutdown with streams in flight: the daemon keeps serving everyone else."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from tests.faults.conftest import SHORT, assert_serves, fd_count, wait_fds_at_most
from tests.faults.summary import injected

STORY = {
    "model": "zoe-chat",
    "messages": [{"role": "user", "content": "Tell me a very long story about a lighthouse keeper."}],
    "max_tokens": 400,
    "temperature": 0.9,
    "stream": True,
}


def address(daemon: Daemon) -> tuple[str, int]:
    host, port = daemon.url.removeprefix("http://").split(":")
    return host, int(port)


def closed_within(
    sock: socket.socket, seconds: float, drip: bytes = b"", until_answer: bool = False
) -> tuple[bool, bytes]:
    """Send ``drip`` one byte every 0.2 s until the peer closes (or answers); (closed?, what it answered)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    answer = b""
    i = 0
    while time.monotonic() < deadline:
        try:
            if drip:
                sock.send(drip[i % len(drip) : i % len(drip) + 1])
                i += 1
            data = sock.recv(65536)
            if not data:
                return True, answer
            answer += data
            if until_answer and b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                return False, answer
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True, answer
    return False, answer


def test_slowloris_headers_are_cut_off_and_others_served(fault_daemon: Daemon) -> None:
    """Headers sent a byte at a time never finish: the keepalive timeout (3 s here) closes the socket."""
    socks = [socket.create_connection(address(fault_daemon)) for _ in range(20)]
    for s in socks:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    injected(len(socks))
    try:
        assert_serves(fault_daemon)  # while 20 slowloris connections hold on
        started = time.monotonic()
        closed, _ = closed_within(socks[0], 15, drip=b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
        assert closed, "a connection still sending headers after 15 s was never closed"
        assert time.monotonic() - started < 10
        for s in socks[1:]:
            assert closed_within(s, 10)[0]
    finally:
        for s in socks:
            s.close()
    assert_serves(fault_daemon)


def test_trickling_body_gets_408_and_others_served(fault_daemon: Daemon) -> None:
    body = json.dumps(SHORT).encode()
    s = socket.create_connection(address(fault_daemon))
    try:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        injected()
        assert_serves(fault_daemon)  # the trickler holds no lock the others need
        started = time.monotonic()
        _, answer = closed_within(s, 15, drip=body, until_answer=True)
        assert time.monotonic() - started < 10
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert payload["error"]["code"] == "request_timeout"
    finally:
        s.close()
    assert "did not arrive within 3 s" in fault_daemon.log()
    assert_serves(fault_daemon)


def test_a_thousand_idle_connections(tmp_path: Path, smollm_path: Path) -> None:
    """1,000 connections that send nothing: a real request is still served while they are open, and the
    daemon's descriptors return to where they were once they close (the daemon's own closing of idle
    sockets is the slowloris test's: here its timeout is long, so all 1,000 are open at once)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    registry = write_registry(tmp_path, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp_path, "--keepalive-timeout", "120")
    try:
        pid = d.proc.pid
        assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)[0] >= 1100, "the daemon could not hold 1,000 sockets"
        assert_serves(d)
        baseline = fd_count(pid)
        socks = []
        try:
            for _ in range(1000):
                socks.append(socket.create_connection(address(d)))
            injected(1000)
            port = address(d)[1]

            def held() -> int:  # the daemon's accepted connections on its port (the fd count also has transients)
                conns = psutil.Process(pid).net_connections(kind="tcp")
                return sum(1 for c in conns if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)

            deadline = time.monotonic() + 30
            while held() < 1000 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert held() >= 1000  # every one really was accepted and is held
            assert_serves(d)
        finally:
            for s in socks:
                s.close()
        assert wait_fds_at_most(pid, baseline + 3, timeout=30) <= baseline + 3
        assert_serves(d)
    finally:
        d.stop()


def test_slow_reader_is_held_by_backpressure_not_memory(fault_daemon: Daemon) -> None:
    """A client that stops reading a stream: the daemon buffers a bounded amount (the socket and aiohttp's
    write buffer), the generation waits for it, and the whole stream still arrives once it reads again."""
    pid = fault_daemon.proc.pid
    assert_serves(fault_daemon)
    rss_before = psutil.Process(pid).memory_info().rss
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(address(fault_daemon))
    body = json.dumps({**STORY, "max_tokens": 200}).encode()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    injected()
    try:
        s.settimeout(30)
        first = s.recv(1024)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        time.sleep(4)  # not reading
        grown = psutil.Process(pid).memory_info().rss - rss_before
        assert grown < 32 * 2**20, f"daemon RSS grew {grown / 2**20:.1f} MiB for one unread stream"
        received = first
        while not (b"data: [DONE]" in received and received.endswith(b"0\r\n\r\n")):
            chunk = s.recv(512)  # slowly: small reads with pauses
            if not chunk:
                break
            received += chunk
            time.sleep(0.001)
        assert b"data: [DONE]" in received, received[-300:]
        assert b'"finish_reason": "' in received or b'"finish_reason":"' in received
        print(f"slow reader: daemon RSS +{grown / 2**20:.1f} MiB after 4 s unread; {len(received)} bytes in all")
    finally:
        s.close()
    assert_serves(fault_daemon)


@pytest.fixture()
def drain_daemon(tmp_path: Path, smollm_path: Path) -> Daemon:
    registry = write_registry(tmp_path, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp_path, "--drain-timeout", "180")  # a busy CPU makes 250 tokens slow
    yield d  # type: ignore[misc]
    d.stop()


def read_telemetry_stream(d: Daemon) -> None:
    with (
        contextlib.suppress(httpx.TransportError),
        httpx.stream("GET", d.url + "/api/telemetry/stream", timeout=60) as r,
    ):
        for _ in r.iter_lines():
            pass


def test_sigterm_finishes_in_flight_streams_and_turns_new_requests_away(drain_daemon: Daemon) -> None:
    d = drain_daemon
    assert_serves(d)
    lines: list[str] = []
    refused: list[httpx.Response] = []

    def late_request() -> None:
        refused.append(httpx.post(d.v1 + "/chat/completions", json=SHORT, timeout=30))

    # an open dashboard: its endless telemetry stream must not hold the shutdown for the drain timeout
    dashboard = threading.Thread(target=read_telemetry_stream, args=(d,), daemon=True)
    dashboard.start()
    with httpx.stream("POST", d.v1 + "/chat/completions", json={**STORY, "max_tokens": 250}, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and not any(x.startswith("data: {") for x in lines):
                d.proc.send_signal(signal.SIGTERM)
                injected()
                time.sleep(0.1)  # the signal is handled by the daemon's loop; the stream has ~250 tokens to go
                late = threading.Thread(target=late_request)
                late.start()
                late.join(30)
            lines.append(line)
    assert "data: [DONE]" in lines, lines[-3:]
    assert refused and refused[0].status_code == 503, refused and refused[0].text
    err = refused[0].json()["error"]
    assert err["code"] == "shutting_down" and int(refused[0].headers["Retry-After"]) >= 1
    finished = time.monotonic()
    assert d.proc.wait(30) == 0
    assert time.monotonic() - finished < 10, "the shutdown waited on the telemetry stream"
    dashboard.join(5)


def test_sigterm_drain_timeout_cuts_what_is_left_and_exits_0(tmp_path: Path, smollm_path: Path) -> None:
    registry = write_registry(tmp_path, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp_path, "--drain-timeout", "1", "--stream-interval-ms", "0")
    try:
        with httpx.stream("POST", d.v1 + "/chat/completions", json={**STORY, "max_tokens": 1800}, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(lines)
            d.proc.send_signal(signal.SIGTERM)
            injected()
            started = time.monotonic()
            with pytest.raises(httpx.TransportError):
                for _ in lines:
                    pass
        assert d.proc.wait(30) == 0
        assert time.monotonic() - started < 15
        assert "drain timeout: cutting 1 request(s) still in flight" in d.log()
        assert not d.workers()
    finally:
        d.stop()
