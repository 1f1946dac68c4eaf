"""The daemon's own OpenAPI description, fuzzed against a live daemon, plus hand-written hostile bodies.

What must hold for every case: no 5xx, no hang (each request has a timeout), and every error body in
the documented shape of its dialect. Generated positive cases get their token counts capped at 8 so the
run fits the CI budget on a CPU; the hand-written cases below send the absurd counts themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from tests.faults.conftest import assert_serves
from tests.faults.summary import fuzzed

EXAMPLES = 10  # per operation and mode: about 250 generated cases


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    """A small context (256 tokens) so that even an uncapped generation ends quickly."""
    tmp = tmp_path_factory.mktemp("fuzz")
    # it also embeds, so the embeddings routes are fuzzed into real vectors, not only refusals
    entry = smollm_entry(smollm_path, n_ctx=256, max_tokens=8, embeddings="also")
    registry = write_registry(tmp, {"smollm2-135m": entry}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp, "--max-body-bytes", "65536", "--body-timeout", "5")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_daemon: Daemon) -> Any:
    """The description as the daemon serves it (so the test also proves /openapi.json)."""
    schema = schemathesis.openapi.from_url(fuzz_daemon.url + "/openapi.json")
    schema.config.update(base_url=fuzz_daemon.url)
    return schema


SPEC = yaml.safe_load(resources.files("zoe_edge.api").joinpath("openapi.yaml").read_text())
OPERATIONS = [(method.upper(), path) for path, item in SPEC["paths"].items() for method in item]
# negative cases need something to break: a body (a string path parameter has no invalid value)
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE
    or "requestBody" in SPEC["paths"][path][method.lower()]
]
# documented answers at or above 500: a model that cannot serve now (503)
DOCUMENTED_5XX = {503: ("/v1/", "/api/", "/ready", "/admin/")}
# every schemathesis check runs but two, which check_error_shape and check_accepted say with the daemon's
# documented exceptions: not_a_server_error (DOCUMENTED_5XX) and positive_data_acceptance (CROSS_FIELD)
EXCLUDED_CHECKS = [not_a_server_error, positive_data_acceptance]
# schema-valid bodies refused for a rule between fields, which OpenAPI 3.0 cannot state (a 400 that names it)
CROSS_FIELD = (
    "needs at least one tool",  # tool_choice required / a named function, without tools
    "which is not among the tools",  # tool_choice names a function the request does not offer
    "tool names must be unique",
    "response_format cannot be combined with tools",
    "send either 'tools' or the legacy 'functions'",
    # not a rule between fields but one against the loaded model: a valid body whose prompt outgrows the
    # fuzz daemon's 256-token context (OpenAI's context_length_exceeded, also a 400)
    "but the model's context is",
    "does not support 'dimensions'",  # a model that is not trained for cut vectors (matryoshka)
    "dimensions must be between",  # wider than the model's vectors
    # a tool's or format's schema that is no JSON Schema (``else: 3``): its metaschema, which OpenAPI 3.0
    # cannot state, says so; any valid schema is served
    "the JSON schema is not valid",
)


def _cap_tokens(body: Any) -> None:
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 8:
            body[key] = 8
    texts = body.get("input")
    if isinstance(texts, list) and len(texts) > 4:
        # embeddings: a few texts say as much as thousands, which a CPU embeds one by one
        body["input"] = texts[:4]
    options = body.get("options")
    if isinstance(options, dict):
        n = options.get("num_predict")
        if isinstance(n, int) and not isinstance(n, bool) and (n > 8 or n < 1):
            options["num_predict"] = 8


# schemathesis' own pytest plugin does not run under pytest 9 yet; its strategies are driven directly
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_openapi_fuzz(api_schema: Any, fuzz_daemon: Daemon, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    ran = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case: Any) -> None:
        if "{name}" in path:
            # a registry name would really load or unload the model; fuzzed names must be 404s
            case.path_parameters = {"name": "fuzz-" + str((case.path_parameters or {}).get("name", ""))}
        if path in ("/api/chat", "/api/generate") and isinstance(case.body, dict) and "options" not in case.body:
            case.body["options"] = {"num_predict": 8}  # Ollama's default is "until the model stops"
        if mode == GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body and len(ran) % 2:
            # every other valid body names the real model, so generation itself is fuzzed, not only the 404
            case.body["model"] = "zoe-chat"
        _cap_tokens(case.body)
        response = case.call(timeout=60)
        fuzzed()
        ran.append(response.status_code)
        case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)
        if response.status_code >= 400:
            check_error_shape(path, response.status_code, response.content)
        if mode == GenerationMode.POSITIVE:
            check_accepted(path, response.status_code, response.content)

    run()
    assert ran, "no case was generated"


def check_accepted(path: str, status: int, content: bytes) -> None:
    """A schema-valid request is served, or refused for a reason the schema cannot hold: an unknown model
    (404: fuzzed names), a body over --max-body-bytes (413), a documented 5xx, or a CROSS_FIELD rule (400)."""
    if status < 400 or status in (404, 413, *DOCUMENTED_5XX):  # 413: the daemon's body limit, not the schema's
        return
    body = json.loads(content)
    error = body["error"] if isinstance(body["error"], str) else body["error"]["message"]  # Ollama / OpenAI, Anthropic
    assert status == 400 and any(rule in error for rule in CROSS_FIELD), (path, status, error[:300])


def check_error_shape(path: str, status: int, content: bytes) -> None:
    assert status < 500 or path.startswith(DOCUMENTED_5XX.get(status, ("-",))), (status, content[:300])
    body = json.loads(content)
    if path.startswith("/api/") and not path.startswith("/api/telemetry"):
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    elif path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body) <= {"type", "error", "request_id"}, body
        assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


GOOD = {"model": "zoe-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
OLLAMA = {"model": "zoe-chat", "messages": [{"role": "user", "content": "Hi"}], "stream": False,
          "options": {"num_predict": 4}}


def deep(n: int) -> bytes:
    """A JSON array nested ``n`` deep (as bytes: the client's own encoder would give up first)."""
    return b"[" * n + b'"x"' + b"]" * n


HOSTILE: list[tuple[str, str, Any, set[int]]] = [
    ("deep nesting 100k", "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, {400, 413}),
    ("deep nesting in a field", "/v1/chat/completions", json.dumps(GOOD)[:-1].encode() + b', "metadata": '
     + deep(5_000) + b"}", {400}),
    ("deep nesting in ollama format", "/api/chat", json.dumps(OLLAMA)[:-1].encode() + b', "format": {"a": '
     + deep(20_000) + b"}}", {400}),
    ("moderate nesting is fine", "/v1/chat/completions", json.dumps(GOOD)[:-1].encode() + b', "metadata": '
     + deep(200) + b"}", {200}),
    ("10 MB string", "/v1/chat/completions", {**GOOD, "messages": [{"role": "user", "content": "x" * 10_000_000}]},
     {413}),
    ("invalid utf-8", "/v1/chat/completions",
     b'{"model": "zoe-chat", "messages": [{"role": "user", "content": "\xc3\x28"}]}', {400}),
    ("invalid utf-8 ollama", "/api/chat", b'{"model": "\xff"}', {400}),
    ("lone surrogate escape", "/v1/chat/completions",
     b'{"model": "zoe-chat", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud800"}]}', {400}),
    ("escaped surrogate pair is fine", "/v1/chat/completions",
     b'{"model": "zoe-chat", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}', {200}),
    ("wrong types", "/v1/chat/completions", {"model": 7, "messages": "hi", "max_tokens": [1]}, {400}),
    ("max_tokens 1e9", "/v1/chat/completions", {**GOOD, "max_tokens": 10**9}, {200}),
    ("max_tokens 1e30", "/v1/chat/completions", {**GOOD, "max_tokens": 10**30}, {200, 400}),
    ("max_tokens float", "/v1/chat/completions", {**GOOD, "max_tokens": 1e308}, {400}),
    ("num_predict 1e9", "/api/chat", {**OLLAMA, "options": {"num_predict": 10**9}}, {200}),
    ("temperature -1", "/v1/chat/completions", {**GOOD, "temperature": -1}, {400}),
    ("temperature NaN", "/v1/chat/completions", b'{"model": "zoe-chat", "messages": [], "temperature": NaN}', {400}),
    ("num_ctx 0", "/api/chat", {**OLLAMA, "options": {"num_ctx": 0, "num_predict": 2}}, {200}),
    ("num_ctx -1", "/api/chat", {**OLLAMA, "options": {"num_ctx": -1}}, {400}),
    ("seed huge", "/v1/chat/completions", {**GOOD, "seed": 10**40}, {400}),
    ("unknown fields", "/v1/chat/completions", {**GOOD, "frobnicate": {"x": 1}, "logit_bias": {"1": 5}}, {200}),
    ("tool schema not an object", "/v1/chat/completions",
     {**GOOD, "tools": [{"type": "function", "function": {"name": "f", "parameters": "nope"}}]}, {400}),
    ("tool schema nonsense", "/v1/chat/completions",
     {**GOOD, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "frobnitz"}}}]},
     {200, 400}),
    ("tool schema self-reference", "/v1/chat/completions",
     {**GOOD, "tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f", "parameters":
      {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}}}]}, {200, 400}),
    ("ollama tool schema nonsense", "/api/chat",
     {**OLLAMA, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": ["x", 3]}}}]},
     {200, 400}),
    ("thousands of messages", "/v1/chat/completions",
     {**GOOD, "messages": [{"role": "user", "content": "hi"}] * 5_000}, {400, 413}),
    ("thousands of empty messages", "/api/chat",
     {**OLLAMA, "messages": [{"role": "user", "content": ""}] * 3_000}, {200, 400, 413}),
    ("json schema format nonsense", "/v1/chat/completions",
     {**GOOD, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}, {200, 400}),
    ("stop list of 10k", "/v1/chat/completions", {**GOOD, "stop": ["a"] * 10_000}, {400}),
    ("null body", "/api/generate", b"null", {400}),
    ("model path", "/v1/chat/completions", {**GOOD, "model": "/etc/passwd"}, {404}),
]


@pytest.mark.parametrize(("name", "path", "body", "allowed"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies(fuzz_daemon: Daemon, name: str, path: str, body: Any, allowed: set[int]) -> None:
    if isinstance(body, bytes):
        r = httpx.post(fuzz_daemon.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=90)
    else:
        r = httpx.post(fuzz_daemon.url + path, json=body, timeout=90)
    fuzzed()
    assert r.status_code in allowed, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        check_error_shape(path, r.status_code, r.content)
    assert fuzz_daemon.proc.poll() is None
    if name.startswith(("deep", "10 MB", "thousands")):
        assert_serves(fuzz_daemon)
