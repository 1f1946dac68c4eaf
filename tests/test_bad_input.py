"""Bad input gets the right status and an OpenAI-shaped body, a log line, and the daemon keeps serving."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import Daemon, copy_truncated, smollm_entry, start_daemon, write_registry

GOOD = {"model": "zoe-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return str(err["message"])


def assert_still_serving(daemon: Daemon) -> None:
    r = httpx.post(daemon.v1 + "/chat/completions", json=GOOD, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


CASES: list[tuple[str, Any, int, str | None, str | None]] = [
    ("malformed json", b'{"model": "zoe-chat", "messages": [', 400, "invalid_json", None),
    ("empty body", b"", 400, "invalid_json", None),
    ("invalid utf-8", b'{"model": "\xff\xfe"}', 400, "invalid_json", None),
    ("not an object", b"[1, 2, 3]", 400, "invalid_type", None),
    ("missing messages", {"model": "zoe-chat"}, 400, "invalid_value", "messages"),
    ("empty messages", {**GOOD, "messages": []}, 400, "invalid_value", "messages"),
    ("wrong type", {**GOOD, "temperature": "hot"}, 400, "invalid_value", "temperature"),
    ("out of range", {**GOOD, "temperature": -1}, 400, "invalid_value", "temperature"),
    ("absurd max_tokens type", {**GOOD, "max_tokens": "lots"}, 400, "invalid_value", "max_tokens"),
    ("zero max_tokens", {**GOOD, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("bad role", {**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value", None),
    ("n=2", {**GOOD, "n": 2}, 400, "invalid_value", "n"),
    (
        "bad tool name",
        {**GOOD, "tools": [{"type": "function", "function": {"name": "turn on!"}}]},
        400,
        "invalid_value",
        "tools[0].function.name",
    ),
    (
        "tool_choice names no tool",
        {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required!"},
        400,
        "invalid_value",
        "tool_choice",
    ),
    ("bad response_format", {**GOOD, "response_format": {"type": "xml"}}, 400, "invalid_value", None),
    ("unknown model", {**GOOD, "model": "gpt-17"}, 404, "model_not_found", "model"),
]


@pytest.mark.parametrize(("name", "body", "status", "code", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_chat_requests(
    daemon: Daemon, name: str, body: Any, status: int, code: str | None, param: str | None
) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(daemon.v1 + "/chat/completions", headers={"Content-Type": "application/json"}, timeout=30, **kwargs)
    assert_openai_error(r, status, code, param)
    assert_still_serving(daemon)


def test_unknown_model_lists_what_exists(daemon: Daemon) -> None:
    r = httpx.post(daemon.v1 + "/chat/completions", json={**GOOD, "model": "nope"})
    message = assert_openai_error(r, 404, "model_not_found")
    assert "smollm2-135m" in message and "zoe-chat" in message
    assert "nope" in daemon.log()  # the log line says why


def test_body_over_limit_is_413(daemon: Daemon) -> None:
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 100_000}]}  # the fixture allows 64 KiB
    r = httpx.post(daemon.v1 + "/chat/completions", json=big, timeout=30)
    assert_openai_error(r, 413, "request_too_large")
    assert_still_serving(daemon)


def test_prompt_longer_than_context_is_400(daemon: Daemon) -> None:
    long = {**GOOD, "messages": [{"role": "user", "content": "word " * 3000}]}  # > 2048 tokens, < 64 KiB
    r = httpx.post(daemon.v1 + "/chat/completions", json=long, timeout=60)
    message = assert_openai_error(r, 400, "context_length_exceeded")
    assert "2048" in message
    assert_still_serving(daemon)


def test_unknown_path_and_method(daemon: Daemon) -> None:
    assert_openai_error(httpx.get(daemon.v1 + "/nothing-here"), 404)
    r = httpx.get(daemon.v1 + "/chat/completions")
    assert "GET is not allowed" in assert_openai_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST"


SPEC = yaml.safe_load(resources.files("zoe_edge.api").joinpath("openapi.yaml").read_text())
WRONG = [
    (path, method)
    for path, item in SPEC["paths"].items()
    for method in ("PUT", "DELETE", "POST" if "get" in item else "GET")
    if method.lower() not in item  # a path may document DELETE (a stored response)
]


@pytest.mark.parametrize(("path", "method"), WRONG, ids=[f"{m} {p}" for p, m in WRONG])
def test_every_documented_path_answers_a_wrong_method_with_405_and_allow(
    daemon: Daemon, path: str, method: str
) -> None:
    """RFC 9110: 405 with the methods the path does answer (HEAD wherever GET), in the path's own dialect."""
    url = daemon.url + path.replace("{name}", "zoe-chat").replace("{response_id}", "resp_x")
    r = httpx.request(method, url, json={}, timeout=30)
    assert r.status_code == 405, r.text
    documented = {m.upper() for m in SPEC["paths"][path]}
    assert set(r.headers["Allow"].split(", ")) == documented | ({"HEAD"} if "GET" in documented else set())
    if path.startswith("/api/") and not path.startswith("/api/telemetry"):
        assert set(r.json()) == {"error"} and f"{method} is not allowed" in r.json()["error"]
    elif path.startswith("/v1/messages"):
        body = r.json()
        assert body["type"] == "error" and f"{method} is not allowed" in body["error"]["message"], body
    else:
        assert_openai_error(r, 405, "method_not_allowed")


@pytest.mark.parametrize("keep_alive", ["", "soon", True])
def test_keep_alive_that_is_no_duration_is_400_as_in_ollama(daemon: Daemon, keep_alive: Any) -> None:
    """Ollama's own server refuses "" (Go's time.ParseDuration) and booleans; openapi.yaml says so too."""
    r = httpx.post(daemon.url + "/api/chat", json={"model": "zoe-chat", "messages": [], "keep_alive": keep_alive})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"], r.text


def test_keep_alive_past_the_end_of_time_is_for_ever(daemon: Daemon) -> None:
    """1e12 s is past what a datetime holds: /api/ps says Ollama's far-future expiry instead of failing."""
    for keep_alive in (1e12, " never ", "10m"):
        r = httpx.post(
            daemon.url + "/api/chat",
            json={"model": "zoe-chat:latest", "messages": [], "keep_alive": keep_alive},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        ps = httpx.get(daemon.url + "/api/ps", timeout=30)
        assert ps.status_code == 200, ps.text
        expires = ps.json()["models"][0]["expires_at"]
        assert expires.startswith("2318-") == (keep_alive != "10m"), (keep_alive, expires)


def test_sdk_raises_typed_errors(daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=daemon.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="zoe-chat", messages=[{"role": "user", "content": "x"}], top_p=7)
    assert br.value.param == "top_p"


@pytest.fixture(scope="module")
def broken_daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Any:
    """One good model plus a missing and a truncated one."""
    tmp = tmp_path_factory.mktemp("broken")
    truncated = copy_truncated(smollm_path, tmp / "truncated.gguf")
    registry = write_registry(
        tmp,
        {
            "good": smollm_entry(smollm_path),
            "missing": smollm_entry(tmp / "does-not-exist.gguf"),
            "truncated": smollm_entry(truncated),
        },
    )
    d = start_daemon(registry, tmp)
    yield d
    d.stop()


@pytest.mark.parametrize(
    ("model", "words", "code"),
    [("missing", "does not exist", "model_missing"), ("truncated", "truncated", "model_load_failed")],
)
def test_missing_or_corrupt_model_is_503_and_others_keep_serving(
    broken_daemon: Daemon, model: str, words: str, code: str
) -> None:
    r = httpx.post(broken_daemon.v1 + "/chat/completions", json={**GOOD, "model": model}, timeout=30)
    message = assert_openai_error(r, 503, code)
    assert words in message
    assert int(r.headers["Retry-After"]) > 0
    assert words in broken_daemon.log()
    r = httpx.post(broken_daemon.v1 + "/chat/completions", json={**GOOD, "model": "good"}, timeout=30)
    assert r.status_code == 200


def write_alien_gguf(path: Path) -> Path:
    """A well-formed GGUF of an architecture llama.cpp does not know: passes header checks, fails to load."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "nonsense-arch")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_model_llama_cpp_cannot_load_is_503(tmp_path: Path, smollm_path: Path) -> None:
    """The header is fine but llama.cpp refuses the model: the worker reports why, the daemon survives."""
    alien = write_alien_gguf(tmp_path / "alien.gguf")
    registry = write_registry(tmp_path, {"good": smollm_entry(smollm_path), "alien": smollm_entry(alien)})
    d = start_daemon(registry, tmp_path)
    try:
        r = httpx.post(d.v1 + "/chat/completions", json={**GOOD, "model": "alien"}, timeout=60)
        message = assert_openai_error(r, 503, "model_load_failed")
        assert "alien" in message
        assert "nonsense-arch" in d.log()  # llama.cpp's own reason reaches the log
        r = httpx.post(d.v1 + "/chat/completions", json={**GOOD, "model": "good"}, timeout=30)
        assert r.status_code == 200, r.text
        assert d.proc.poll() is None
    finally:
        d.stop()
