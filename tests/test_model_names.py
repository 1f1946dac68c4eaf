"""One name resolver on every path that names a model, under the key's rules: a real daemon, SmolLM2, a cloud fake.

Every endpoint that generates, loads, unloads, sets keep-alive, shows or pulls gives a key limited to one alias
a 403 for any other name (an unknown one too: the key learns no other names) and counts it against the key's
rpm; and ``name`` and ``name:latest`` (what ``/api/tags`` lists) mean the same on every front.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Daemon, start_daemon
from tests.fakes.common import FakeReply
from tests.fakes.openai_fake import OpenAIFake
from tests.keyed import ADMIN_KEY, API_KEY, bearer, keyed_env, keyed_registry

HI = [{"role": "user", "content": "Say hi."}]
TINY = {"num_predict": 2}
Body = Callable[[str], dict[str, Any] | None]
# (what it does, path with {name} for a path parameter, the body for a name)
ENDPOINTS: list[tuple[str, str, Body]] = [
    ("openai chat", "/v1/chat/completions", lambda n: {"model": n, "messages": HI, "max_tokens": 2}),
    ("openai completion", "/v1/completions", lambda n: {"model": n, "prompt": "Hi", "max_tokens": 2}),
    ("ollama chat", "/api/chat", lambda n: {"model": n, "messages": HI, "stream": False, "options": TINY}),
    ("ollama generate", "/api/generate", lambda n: {"model": n, "prompt": "Hi", "stream": False, "options": TINY}),
    ("ollama load", "/api/chat", lambda n: {"model": n, "messages": []}),
    ("ollama keep-alive", "/api/generate", lambda n: {"model": n, "keep_alive": "10m"}),
    ("ollama unload", "/api/chat", lambda n: {"model": n, "messages": [], "keep_alive": 0}),
    ("ollama show", "/api/show", lambda n: {"model": n}),
    ("ollama pull", "/api/pull", lambda n: {"model": n, "stream": False}),
    ("openai responses", "/v1/responses", lambda n: {"model": n, "input": "Say hi.", "max_output_tokens": 2}),
    ("anthropic messages", "/v1/messages", lambda n: {"model": n, "messages": HI, "max_tokens": 2}),
    ("anthropic count tokens", "/v1/messages/count_tokens", lambda n: {"model": n, "messages": HI}),
    ("openai embeddings", "/v1/embeddings", lambda n: {"model": n, "input": "hi"}),
    ("ollama embed", "/api/embed", lambda n: {"model": n, "input": "hi"}),
    ("admin load", "/admin/models/{name}/load", lambda n: None),
    ("admin unload", "/admin/models/{name}/unload", lambda n: None),
]


def only_zoe_chat(i: int) -> str:
    """A key of its own per endpoint (rpm 1, zoe-chat only), so each endpoint's rpm is seen alone."""
    return f"zk-only-zoe-chat-{i:04d}"


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("names")
    # the cloud fake serves from a loop of its own (a module's daemon outlives any test's loop)
    fake = OpenAIFake()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(fake.start())
    fake.default = FakeReply(text="Hello from the cloud.")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    registry = keyed_registry(tmp, smollm_path, fake.url)
    data = yaml.safe_load(registry.read_text())
    for i, (_, path, _) in enumerate(ENDPOINTS):
        data["keys"][f"only-zoe-chat-{i}"] = {
            "key": "sha256:" + hashlib.sha256(only_zoe_chat(i).encode()).hexdigest(),
            "role": "admin" if path.startswith("/admin") else "client",
            "aliases": ["zoe-chat"],
            "rpm": 1,
        }
    data["models"]["smol"]["embeddings"] = "also"  # so the embeddings endpoints serve it too
    registry.write_text(yaml.safe_dump(data))
    d = start_daemon(registry, tmp, env=keyed_env(), api_key=API_KEY)
    yield d
    d.stop()
    asyncio.run_coroutine_threadsafe(fake.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def slot(d: Daemon) -> dict[str, Any]:
    r = httpx.get(d.url + "/admin/status", headers=bearer(ADMIN_KEY), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json()["slot"])


def call(d: Daemon, path: str, body: dict[str, Any] | None, name: str, key: str) -> httpx.Response:
    url = d.url + path.replace("{name}", name)
    return httpx.post(url, json=body, headers=bearer(key), timeout=120)


def error_of(path: str, r: httpx.Response) -> tuple[str, str | None]:
    """(message, code) from each dialect: Ollama's ``{"error": "..."}`` under /api, Anthropic's under /v1/messages,
    OpenAI's elsewhere."""
    body = r.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        return body["error"]["message"], None
    if path.startswith("/api/"):
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return body["error"], None
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]["message"], body["error"]["code"]


@pytest.mark.parametrize(
    ("i", "what", "path", "body"), [(i, *e) for i, e in enumerate(ENDPOINTS)], ids=[e[0] for e in ENDPOINTS]
)
def test_a_key_limited_to_one_alias_gets_403_for_any_other_name_and_rpm_applies(
    named: Daemon, i: int, what: str, path: str, body: Body
) -> None:
    key = only_zoe_chat(i)
    assert httpx.post(named.url + "/admin/models/smol/load", headers=bearer(ADMIN_KEY), timeout=120).status_code == 200
    pid = slot(named)["pid"]
    assert pid
    # the model itself, its tagged name, a route and an unknown name: all 403, and the house's model stays
    for other in ("smol", "smol:latest", "cloud-only", "nope:latest"):
        r = call(named, path, body(other), other, key)
        assert r.status_code == 403, (what, other, r.text)
        message, code = error_of(path, r)
        shown = other if other == "nope:latest" else other.removesuffix(":latest")  # a known name, untagged
        assert f"may not use {shown!r}" in message, message
        assert code in (None, "model_not_allowed")
        assert "Available" not in message  # no list of the other names
    now = slot(named)
    assert now["model"] == "smol" and now["pid"] == pid, (what, now)
    # the one name it may use, in Ollama's tagged form: served (the 403s did not count) ...
    r = call(named, path, body("zoe-chat:latest"), "zoe-chat:latest", key)
    assert r.status_code == 200, (what, r.text)
    # ... and once is its rpm
    r = call(named, path, body("zoe-chat"), "zoe-chat", key)
    assert r.status_code == 429, (what, r.text)
    message, code = error_of(path, r)
    assert "1 requests per minute" in message and code in (None, "rate_limit_exceeded")
    assert 1 <= int(r.headers["Retry-After"]) <= 60


def test_every_listed_name_works_bare_and_tagged_on_every_front(named: Daemon) -> None:
    tags = httpx.get(named.url + "/api/tags", headers=bearer(API_KEY), timeout=30).json()["models"]
    listed = [m["name"] for m in tags]
    assert listed == ["smol:latest", "zoe-chat:latest", "cloud-first:latest", "cloud-only:latest"]
    # every listed name, as listed, on the OpenAI front (the reported 404) and on the Ollama ones
    for tagged in listed:
        for what, path, body in (ENDPOINTS[0], ENDPOINTS[2], ENDPOINTS[7]):
            r = call(named, path, body(tagged), tagged, API_KEY)
            assert r.status_code == 200, (what, tagged, r.text)
    # one name both ways on every endpoint (every name resolves through the same code)
    for name in ("zoe-chat", "zoe-chat:latest"):
        for what, path, body in ENDPOINTS:
            key = ADMIN_KEY if path.startswith("/admin") else API_KEY
            r = call(named, path, body(name), name, key)
            assert r.status_code == 200, (what, name, r.text)
    # the listing's facts come from the model each name resolves to, a route's local target included
    sizes = {m["name"]: m["size"] for m in tags}
    assert sizes["smol:latest"] == sizes["zoe-chat:latest"] == sizes["cloud-first:latest"] > 0
    assert sizes["cloud-only:latest"] == 0
    # the admin API resolves names the same way
    for name in ("zoe-chat:latest", "cloud-first", "smol:latest"):
        r = httpx.post(named.url + f"/admin/models/{name}/load", headers=bearer(ADMIN_KEY), timeout=120)
        assert r.status_code == 200 and r.json()["loaded"] == "smol", r.text
    r = httpx.post(named.url + "/admin/models/cloud-only:latest/load", headers=bearer(ADMIN_KEY), timeout=30)
    assert r.status_code == 400 and "only cloud targets" in r.json()["error"]["message"]
    r = httpx.post(named.url + "/admin/models/nope:latest/load", headers=bearer(ADMIN_KEY), timeout=30)
    assert r.status_code == 404 and r.json()["error"]["param"] == "name"
    # /api/ps lists the loaded model under its tagged name, which /v1 then serves
    ps = httpx.get(named.url + "/api/ps", headers=bearer(API_KEY), timeout=30).json()["models"]
    assert [m["name"] for m in ps] == ["smol:latest"]
    r = call(named, "/v1/chat/completions", ENDPOINTS[0][2]("smol:latest"), "", API_KEY)
    assert r.status_code == 200 and r.headers["x-zoe-route"] == "smol (model)"
