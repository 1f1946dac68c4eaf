"""Reasoning through the fronts: OpenAI's reasoning_content and Ollama's thinking, whole and streamed, read by
the real ``openai`` and ``ollama`` clients from a front over a fake gateway; and on the live daemon with
SmolLM2, whose template has no reasoning, the answer is the one reasoning handling off gives."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from tests.fakes.gateway import FakeGateway as ScriptedGateway
from zoe_edge.api import ollama as ollama_front
from zoe_edge.api import openai as openai_front
from zoe_edge.api.common import GATEWAY, SETTINGS
from zoe_edge.api.middlewares import request_context
from zoe_edge.canonical import Event, Finish, GenerationRequest, ReasoningDelta, TextDelta, ToolCall, Usage
from zoe_edge.config import Settings
from zoe_edge.routing.reasoning import ReasoningSetup, detect, split_reasoning

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reasoning"
QWEN3 = detect((FIXTURES / "qwen3.jinja").read_text(encoding="utf-8"))
CASES = {c["name"]: c for c in json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))}
ARITHMETIC = CASES["qwen3-arithmetic"]
MODEL = "qwen3-0.6b"
FINISH = Finish("stop", Usage(12, 40, 0))


def raw_deltas(text: str, size: int = 5) -> list[Event]:
    """A local model's text as the worker streams it: tags and all, cut anywhere."""
    return [TextDelta(text[i : i + size]) for i in range(0, len(text), size)]


class FakeGateway(ScriptedGateway):
    """The scripted gateway, its stream split as dispatch splits a local model's (``setup``), honouring the
    request's ``think``."""

    def __init__(self) -> None:
        super().__init__()
        self.script = [*raw_deltas(ARITHMETIC["completion"]), FINISH]
        self.setup: ReasoningSetup = QWEN3

    def shape(self, req: GenerationRequest, events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
        return split_reasoning(events, self.setup, req.think)


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
async def client(aiohttp_client: Any, fake: FakeGateway) -> TestClient[Any, Any]:
    app = web.Application(middlewares=[request_context])
    app[SETTINGS] = Settings()
    app[GATEWAY] = fake
    openai_front.add_routes(app)
    ollama_front.add_routes(app)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


@pytest.fixture
def oai(client: TestClient[Any, Any]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


@pytest.fixture
def oll(client: TestClient[Any, Any]) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=str(client.make_url("/")).rstrip("/"))


USER = [{"role": "user", "content": "What is 17 times 23?"}]
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 17 times 23?"}]


# --- OpenAI ----------------------------------------------------------------------------------------


async def test_openai_whole_answer_has_reasoning_content(oai: openai.AsyncOpenAI, fake: FakeGateway) -> None:
    resp = await oai.chat.completions.create(model="zoe-chat", messages=CHAT)
    message = resp.choices[0].message
    assert message.content == ARITHMETIC["answer"]
    # the SDK keeps fields it does not declare
    assert getattr(message, "reasoning_content", None) == ARITHMETIC["reasoning"]
    assert "<think>" not in (message.content or "") and "</think>" not in (message.content or "")
    assert fake.requests[-1].think is None


async def test_openai_stream_has_reasoning_deltas_then_content(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="zoe-chat", messages=CHAT, stream=True)
    thought, content, order = [], [], []
    async for chunk in stream:
        delta = chunk.choices[0].delta
        piece = (delta.model_extra or {}).get("reasoning_content")
        if piece is not None:
            thought.append(piece)
            order.append("r")
        if delta.content:
            content.append(delta.content)
            order.append("c")
    assert "".join(thought) == ARITHMETIC["reasoning"]
    assert "".join(content) == ARITHMETIC["answer"]
    assert order == sorted(order, reverse=True)  # all thinking, then the answer
    assert len(thought) > 1  # streamed as it came, not gathered


async def test_openai_stream_wire_format(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/chat/completions", json={"model": "zoe-chat", "messages": USER, "stream": True})
    lines = [line for line in (await r.text()).split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and "reasoning_content" in first and "content" not in first
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)


@pytest.mark.parametrize(("effort", "think"), [("none", False), ("minimal", False), ("low", True), ("high", True)])
async def test_reasoning_effort_is_think(
    oai: openai.AsyncOpenAI, fake: FakeGateway, effort: Any, think: bool | None
) -> None:
    resp = await oai.chat.completions.create(model="zoe-chat", messages=CHAT, reasoning_effort=effort)
    assert fake.requests[-1].think is think
    message = resp.choices[0].message
    assert message.content == ARITHMETIC["answer"]
    assert getattr(message, "reasoning_content", None) == (ARITHMETIC["reasoning"] if think else None)


async def test_reasoning_effort_none_streams_no_thinking(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="zoe-chat",
        messages=CHAT,
        stream=True,
        reasoning_effort="none",
    )
    content = []
    async for chunk in stream:
        assert "reasoning_content" not in (chunk.choices[0].delta.model_extra or {}) if chunk.choices else True
        if chunk.choices and chunk.choices[0].delta.content:
            content.append(chunk.choices[0].delta.content)
    assert "".join(content) == ARITHMETIC["answer"]


async def test_a_bad_reasoning_effort_is_a_400(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER, "reasoning_effort": "lots"})
    assert r.status == 400 and "reasoning_effort" in (await r.json())["error"]["message"]


async def test_no_reasoning_means_no_field(oai: openai.AsyncOpenAI, fake: FakeGateway) -> None:
    fake.script = [TextDelta("Hello."), FINISH]
    resp = await oai.chat.completions.create(model="zoe-chat", messages=CHAT)
    assert resp.choices[0].message.content == "Hello."
    assert "reasoning_content" not in (resp.choices[0].message.model_extra or {})


async def test_text_completions_have_no_reasoning_field(oai: openai.AsyncOpenAI, fake: FakeGateway) -> None:
    fake.setup = ReasoningSetup(None, "a raw prompt is not split")
    fake.script = [ReasoningDelta("hidden"), TextDelta("text"), FINISH]
    whole = await oai.completions.create(model="zoe-chat", prompt="x")
    assert whole.choices[0].text == "text"
    stream = await oai.completions.create(model="zoe-chat", prompt="x", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "text"


async def test_thinking_before_a_call(oai: openai.AsyncOpenAI, fake: FakeGateway) -> None:
    call = ToolCall(0, "call_1", "HassTurnOn", {"name": "Kitchen Ceiling"})
    fake.script = [
        *raw_deltas("<think>\nThe kitchen light; HassTurnOn.\n</think>\n\n"),
        call,
        Finish("tool_calls", Usage(1, 2)),
    ]
    resp = await oai.chat.completions.create(model="zoe-chat", messages=CHAT)
    message = resp.choices[0].message
    assert getattr(message, "reasoning_content", None) == "The kitchen light; HassTurnOn."
    assert message.content is None and message.tool_calls is not None
    assert json.loads(message.tool_calls[0].function.arguments) == {"name": "Kitchen Ceiling"}  # type: ignore[union-attr]


# --- Ollama ----------------------------------------------------------------------------------------


async def test_ollama_chat_whole_has_thinking(oll: ollama.AsyncClient, fake: FakeGateway) -> None:
    resp = await oll.chat(model="zoe-chat", messages=USER, stream=False)
    assert resp.message.thinking == ARITHMETIC["reasoning"]
    assert resp.message.content == ARITHMETIC["answer"]
    assert resp.done and fake.requests[-1].think is None


async def test_ollama_chat_stream_has_thinking_then_content(oll: ollama.AsyncClient) -> None:
    thought: list[str] = []
    content: list[str] = []
    async for part in await oll.chat(model="zoe-chat", messages=USER, stream=True, think=True):
        if part.message.thinking:
            assert not "".join(content), "thinking after the answer began"
            thought.append(part.message.thinking)
        content.append(part.message.content or "")
    assert "".join(thought) == ARITHMETIC["reasoning"] and len(thought) > 1
    assert "".join(content) == ARITHMETIC["answer"]


async def test_ollama_generate_has_thinking(oll: ollama.AsyncClient) -> None:
    whole = await oll.generate(model="zoe-chat", prompt="What is 17 times 23?", stream=False)
    assert whole.thinking == ARITHMETIC["reasoning"] and whole.response == ARITHMETIC["answer"]
    thought, text = [], []
    async for part in await oll.generate(model="zoe-chat", prompt="What is 17 times 23?", stream=True):
        thought.append(part.thinking or "")
        text.append(part.response or "")
    assert "".join(thought) == ARITHMETIC["reasoning"] and "".join(text) == ARITHMETIC["answer"]


@pytest.mark.parametrize(("think", "canonical"), [(False, False), (True, True), ("high", True), (None, None)])
async def test_ollama_think_maps_and_false_drops_thinking(
    oll: ollama.AsyncClient, fake: FakeGateway, think: Any, canonical: bool | None
) -> None:
    resp = await oll.chat(model="zoe-chat", messages=USER, stream=False, think=think)
    assert fake.requests[-1].think is canonical
    assert resp.message.content == ARITHMETIC["answer"]
    assert resp.message.thinking == (None if think is False else ARITHMETIC["reasoning"])


async def test_ollama_stream_without_thinking_has_no_field(client: TestClient[Any, Any], fake: FakeGateway) -> None:
    fake.script = [TextDelta("Hi"), TextDelta(" there"), FINISH]
    r = await client.post("/api/chat", json={"model": "zoe-chat", "messages": USER, "think": False})
    lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert all("thinking" not in line["message"] for line in lines)
    assert "".join(line["message"]["content"] for line in lines) == "Hi there"


async def test_ollama_bad_think_is_a_400(client: TestClient[Any, Any]) -> None:
    r = await client.post("/api/chat", json={"model": "zoe-chat", "messages": USER, "think": "lots"})
    assert r.status == 400 and "think" in (await r.json())["error"]


# --- the live daemon: SmolLM2 has no reasoning, so nothing is split and nothing lost -------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    """The same SmolLM2 file three times: reasoning detected from its template, forced on, and off."""
    tmp = tmp_path_factory.mktemp("reasoning")
    models = {
        "smollm2-auto": smollm_entry(smollm_path),
        "smollm2-tags": smollm_entry(smollm_path, reasoning="think-tags"),
        "smollm2-off": smollm_entry(smollm_path, reasoning="none"),
    }
    d = start_daemon(write_registry(tmp, models), tmp)
    yield d
    d.stop()


PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]


def fresh(daemon: Daemon, model: str) -> None:
    """Unload ``model``: the next request evaluates its prompt from an empty KV cache. Greedy decoding of a
    prompt partly reused from the previous request's cache can differ in a near tie, which is not ours."""
    r = httpx.post(daemon.url + "/api/chat", json={"model": model, "messages": [], "keep_alive": 0}, timeout=120)
    assert r.status_code == 200, r.text


def answers(daemon: Daemon, model: str) -> tuple[str, str, dict[str, Any]]:
    """(whole content, streamed content, whole message) for the same greedy request."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 32}
    fresh(daemon, model)
    whole = httpx.post(daemon.v1 + "/chat/completions", json=body, timeout=120)
    assert whole.status_code == 200, whole.text
    message = whole.json()["choices"][0]["message"]
    streamed = []
    fresh(daemon, model)
    with httpx.stream("POST", daemon.v1 + "/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                assert "reasoning_content" not in delta
                streamed.append(delta.get("content") or "")
    return message["content"], "".join(streamed), message


def test_live_smollm2_content_is_unchanged(live: Daemon) -> None:
    off_whole, off_stream, _ = answers(live, "smollm2-off")
    assert off_whole and off_whole == off_stream
    for model in ("smollm2-auto", "smollm2-tags"):
        whole, streamed, message = answers(live, model)
        assert "reasoning_content" not in message, model
        assert whole == off_whole and streamed == off_whole, model


def test_live_think_false_changes_nothing_for_a_model_that_does_not_think(live: Daemon) -> None:
    """Home Assistant sends think: false on every chat: with SmolLM2 it must give the same answer."""
    client = ollama.Client(host=live.url, timeout=120)
    args: dict[str, Any] = {"model": "smollm2-auto", "messages": PROMPT, "options": {"num_predict": 32}}
    fresh(live, "smollm2-auto")
    plain = client.chat(**args, stream=False)
    fresh(live, "smollm2-auto")
    unthinking = client.chat(**args, stream=False, think=False)
    assert plain.message.content and unthinking.message.content == plain.message.content
    assert plain.message.thinking is None and unthinking.message.thinking is None
    fresh(live, "smollm2-auto")
    streamed = "".join(part.message.content or "" for part in client.chat(**args, stream=True, think=False))
    assert streamed == plain.message.content
