"""The HTTP side in-process: /api/telemetry, the SSE stream, the dashboard files, and browser auth."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from tests.telemetry.helpers import THROTTLED, lines
from zoe_edge.api import telemetry
from zoe_edge.api.common import RECENT_REQUESTS, SETTINGS, context
from zoe_edge.api.middlewares import api_key_auth, request_context
from zoe_edge.config import Settings
from zoe_edge.telemetry.probe import Source
from zoe_edge.telemetry.sampler import Sampler
from zoe_edge.telemetry.tegrastats import Reading, parse_line

Client = TestClient  # type: ignore[type-arg]
MakeClient = Callable[..., Awaitable[Client]]


class Cycling(Source):
    name = "tegrastats"

    def __init__(self) -> None:
        super().__init__()
        self.reason = "tegrastats: running /usr/bin/tegrastats --interval 100 (jtop is not installed)"
        self.lines = lines(THROTTLED)
        self.i = 0

    async def read(self) -> Reading | None:
        line = self.lines[self.i % len(self.lines)]
        self.i += 1
        return parse_line(line)


async def generation(request: web.Request) -> web.Response:
    """Stands in for a front that went through the router."""
    ctx = context(request)
    ctx.served_by = "cloud:openai/gpt-4o-mini"
    ctx.route_headers = {"x-zoe-route": "alias zoe-chat", "x-zoe-fallback-reason": "smollm2-135m: too hot"}
    return web.json_response({"ok": True})


def make_app(api_key: str | None = None) -> web.Application:
    app = web.Application(middlewares=[request_context, api_key_auth])
    app[SETTINGS] = Settings(api_key=SecretStr(api_key) if api_key else None)

    async def choose(interval: float) -> Source:
        return Cycling()

    telemetry.setup(app, Sampler(0.1, daemon=lambda: {"model": "smollm2-135m", "queue": 0}, choose=choose))
    app.router.add_post("/v1/chat/completions", generation)
    return app


async def wait_for_samples(client: Client, n: int) -> dict[str, Any]:
    for _ in range(100):
        r = await client.get("/api/telemetry")
        body: dict[str, Any] = await r.json()
        if len(body["history"]) >= n:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("the sampler produced no samples")


async def test_snapshot_and_history(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app())
    body = await wait_for_samples(client, 3)
    assert body["source"] == "tegrastats" and body["reason"].startswith("tegrastats: running")
    assert body["interval_s"] == 0.1 and body["capacity"] == 9000
    snap = body["snapshot"]
    assert snap["temps"]["tj"] in (96.125, 96.75) and snap["daemon"]["model"] == "smollm2-135m"
    assert snap["thermal"]["state"] == "soft" and snap["thermal"]["sensor"] == "tj"
    assert any(w["kind"] == "thermal" for w in snap["warnings"])
    seqs = [h["seq"] for h in body["history"]]
    assert seqs == sorted(seqs) and seqs[-1] == snap["seq"]
    assert {h["power_mw"] for h in body["history"]} <= {24890.0, 21040.0}
    r = await client.get("/api/telemetry", params={"seconds": "0"})
    assert (await r.json())["history"] == []


@pytest.mark.parametrize("seconds", ["abc", "-1", "1e9"])
async def test_a_bad_seconds_parameter_is_a_400_in_openai_shape(aiohttp_client: MakeClient, seconds: str) -> None:
    client = await aiohttp_client(make_app())
    r = await client.get("/api/telemetry", params={"seconds": seconds})
    assert r.status == 400
    body = await r.json()
    assert body["error"]["param"] == "seconds" and "between 0 and 86400" in body["error"]["message"]


async def read_events(response: Any, n: int) -> tuple[list[str], list[dict[str, Any]]]:
    raw_lines: list[str] = []
    events: list[dict[str, Any]] = []
    while len(events) < n:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode()
        raw_lines.append(line)
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    return raw_lines, events


async def test_sse_stream_carries_each_sample(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app())
    await wait_for_samples(client, 1)
    async with client.get("/api/telemetry/stream") as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Request-Id"]
        raw, events = await read_events(r, 4)
    assert raw[0].startswith("retry: ")
    assert any(line.startswith("id: ") for line in raw)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert {e["temps"]["tj"] for e in events} == {96.125, 96.75}
    assert {e["power"]["total_mw"] for e in events} == {24890.0, 21040.0}
    # the second fixture line has soc1 offline
    assert any(e["temps"]["soc1"] is None for e in events)


async def test_streams_end_on_shutdown(aiohttp_client: MakeClient) -> None:
    app = make_app()
    client = await aiohttp_client(app)
    await wait_for_samples(client, 1)
    async with client.get("/api/telemetry/stream") as r:
        await read_events(r, 1)
        await telemetry.end_streams(app)
        rest = await asyncio.wait_for(r.content.read(), 5)  # returns at EOF: the server finished the stream
    assert isinstance(rest, bytes)
    assert app[telemetry.SAMPLER].subscribers == 0


async def test_dashboard_and_its_files_are_local_only(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app())
    r = await client.get("/dashboard")
    assert r.status == 200 and r.content_type == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    html = await r.text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/dashboard/static/dashboard.js" in refs and "/dashboard/static/dashboard.css" in refs
    assert all(ref.startswith("/") or ref.startswith("data:") for ref in refs), refs
    assert 'name="viewport"' in html  # readable on a phone
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        r = await client.get(f"/dashboard/static/{name}")
        assert r.status == 200 and r.content_type == kind
        body = await r.text()
        assert "http://" not in body and "https://" not in body and "//cdn" not in body
    for bad in ("/dashboard/static/dashboard.html.bak", "/dashboard/static/..%2F..%2Fconfig.py"):
        r = await client.get(bad)
        assert r.status == 404


def basic(password: str, user: str = "owner") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_browser_paths_take_the_key_as_basic_auth(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app(api_key="s3cret"))
    for path in ("/dashboard", "/api/telemetry", "/dashboard/static/dashboard.js"):
        r = await client.get(path)
        assert r.status == 401, path
        # the browser asks the owner for the key instead of showing a JSON error
        assert r.headers["WWW-Authenticate"].startswith('Basic realm="zoe-edge"'), path
        assert (await client.get(path, headers=basic("s3cret"))).status == 200, path
        assert (await client.get(path, headers={"Authorization": "Bearer s3cret"})).status == 200, path
        assert (await client.get(path, headers=basic("wrong"))).status == 401, path
    r = await client.get("/api/telemetry", headers={"Authorization": "Basic !!notbase64"})
    assert r.status == 401
    async with client.get("/api/telemetry/stream", headers=basic("s3cret")) as r:
        assert r.status == 200
    # the API proper still wants a bearer token and does not invite a password prompt
    r = await client.post("/v1/chat/completions", headers=basic("s3cret"))
    assert r.status == 401 and "WWW-Authenticate" not in r.headers
    assert (await client.post("/v1/chat/completions", headers={"Authorization": "Bearer s3cret"})).status == 200


async def test_generation_requests_are_remembered_for_the_dashboard(aiohttp_client: MakeClient) -> None:
    app = make_app()
    client = await aiohttp_client(app)
    assert (await client.post("/v1/chat/completions")).status == 200
    assert (await client.get("/api/telemetry")).status == 200  # not a generation: not recorded
    (recent,) = app[RECENT_REQUESTS]
    assert recent["served_by"] == "cloud:openai/gpt-4o-mini" and recent["status"] == 200
    assert recent["route"] == "alias zoe-chat" and recent["fallback"] == "smollm2-135m: too hot"
    assert recent["path"] == "/v1/chat/completions" and recent["ms"] >= 0
