"""The OpenAI front driven by the official ``openai`` SDK against the real daemon and SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from llama_cpp import Llama

from tests.conftest import Daemon

PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.v1, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def vocab(smollm_path: Path) -> Llama:
    """The model's tokenizer alone, to count tokens independently of the daemon."""
    return Llama(str(smollm_path), vocab_only=True, verbose=False)


def chat_prompt_tokens(vocab: Llama, messages: list[dict[str, str]]) -> int:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(vocab.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
    rendered = fmt(messages=messages)
    return len(vocab.tokenize(rendered.prompt.encode(), add_bos=False, special=True))


def test_chat_non_stream(client: openai.OpenAI, vocab: Llama) -> None:
    resp = client.chat.completions.create(model="zoe-chat", messages=PROMPT, max_tokens=40)  # type: ignore[arg-type]
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "smollm2-135m"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == chat_prompt_tokens(vocab, PROMPT)
    assert 0 < resp.usage.completion_tokens <= 40
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_max_tokens_gives_length_and_exact_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    for field in ("max_tokens", "max_completion_tokens"):
        resp = client.chat.completions.create(model="zoe-chat", messages=messages, **{field: 7})  # type: ignore[call-overload]
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage.completion_tokens == 7


def test_stream_matches_non_stream(client: openai.OpenAI) -> None:
    kwargs = {"model": "zoe-chat", "messages": PROMPT, "max_tokens": 30, "seed": 7}
    full = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)  # type: ignore[call-overload]
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content_chunks[1:])
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    assert content_chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == full.choices[0].message.content
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == full.usage.completion_tokens  # type: ignore[union-attr]
    assert usage_chunk.usage.prompt_tokens == full.usage.prompt_tokens  # type: ignore[union-attr]


def test_stream_wire_format_is_plain_sse(daemon: Daemon) -> None:
    body = {"model": "zoe-chat", "messages": PROMPT, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", daemon.v1 + "/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert "usage" not in json.loads(events[-2][6:])  # include_usage was not asked for


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=8)
    assert resp.object == "text_completion"
    assert resp.choices[0].text
    assert resp.usage is not None and resp.usage.completion_tokens <= 8
    default = client.completions.create(model="smollm2-135m", prompt="Once upon a time")
    assert default.usage is not None and default.usage.completion_tokens <= 16  # OpenAI's default max_tokens
    stream = client.completions.create(
        model="smollm2-135m", prompt="The capital of France is", max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == resp.choices[0].text


def test_stop_sequence(client: openai.OpenAI) -> None:
    prompt = "Count from 1 to 10, one number per line:\n1\n2\n3\n"
    free = client.completions.create(model="zoe-chat", prompt=prompt, max_tokens=20)
    assert "5" in free.choices[0].text  # greedy SmolLM2 keeps counting
    stopped = client.completions.create(model="zoe-chat", prompt=prompt, max_tokens=20, stop=["5"])
    assert stopped.choices[0].finish_reason == "stop"
    assert "5" not in stopped.choices[0].text
    assert free.choices[0].text.startswith(stopped.choices[0].text)
    streamed = client.completions.create(model="zoe-chat", prompt=prompt, max_tokens=20, stop=["5"], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == stopped.choices[0].text


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="zoe-chat",
        messages=[{"role": "user", "content": "Give a JSON object with keys name and age for a person."}],
        response_format={"type": "json_object"},
        max_tokens=200,
    )
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    resp = client.chat.completions.create(
        model="zoe-chat",
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        max_tokens=200,
    )
    data = json.loads(resp.choices[0].message.content or "")
    assert set(data) == {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    kwargs = {"model": "zoe-chat", "messages": PROMPT, "max_tokens": 20, "temperature": 1.0}
    a = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content  # type: ignore[call-overload]
    b = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content  # type: ignore[call-overload]
    assert a == b


def test_models_lists_models_and_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"smollm2-135m", "zoe-chat"}


def test_health_and_ready(daemon: Daemon) -> None:
    assert httpx.get(daemon.url + "/health").json()["status"] == "ok"
    ready = httpx.get(daemon.url + "/ready").json()
    assert ready == {"status": "ready", "model": "smollm2-135m", "loaded": True}
