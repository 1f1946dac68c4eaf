"""OpenAI request bodies -> canonical requests, and the 400s for bodies we cannot serve."""

from __future__ import annotations

from typing import Any

import pytest

from zoe_edge.api.common import parse_body
from zoe_edge.api.openai import MAX_STOP, ChatCompletionRequest, CompletionRequest
from zoe_edge.canonical import Message, OutputConstraint
from zoe_edge.errors import InvalidRequest

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Once upon a time", **fields}


def test_minimal_chat_body() -> None:
    req = parse_body(ChatCompletionRequest, chat()).to_canonical()
    assert req.model == "m"
    assert req.messages == [Message(role="user", content="hi")]
    assert req.prompt is None
    assert req.max_tokens is None  # the registry fills it later
    assert req.stop == []
    assert req.stream is False
    assert req.constraint is None
    assert req.sampling.model_dump(exclude_none=True) == {}


def test_chat_body_to_canonical() -> None:
    body = {
        "model": "zoe-chat",
        "messages": [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]},
            {"role": "assistant", "content": None, "name": "bot"},
            {"role": "tool", "content": "42"},
        ],
        "max_tokens": 100,
        "max_completion_tokens": 20,
        "stop": "\n\n",
        "temperature": 0.0,
        "top_p": 0.5,
        "top_k": 10,
        "min_p": 0.1,
        "repeat_penalty": 1.2,
        "presence_penalty": -1,
        "frequency_penalty": 1.5,
        "seed": -1,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {"50256": -100},  # unknown/unused fields are ignored, not rejected
        "metadata": {"x": "y"},
        "tool_choice": "none",
    }
    parsed = parse_body(ChatCompletionRequest, body)
    assert parsed.include_usage is True
    req = parsed.to_canonical()
    assert req.model == "zoe-chat"
    assert req.messages == [
        Message(role="system", content="Be terse."),  # developer -> system
        Message(role="user", content="Hello, world"),  # text parts joined
        Message(role="assistant", content="", name="bot"),
        Message(role="tool", content="42"),
    ]
    assert req.max_tokens == 20  # max_completion_tokens wins over max_tokens
    assert req.stop == ["\n\n"]
    assert req.stream is True
    s = req.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repeat_penalty) == (0.0, 0.5, 10, 0.1, 1.2)
    assert (s.presence_penalty, s.frequency_penalty) == (-1.0, 1.5)
    assert s.seed == 2**32 - 1  # folded into llama.cpp's 32-bit seed range


def test_max_tokens_used_without_max_completion_tokens() -> None:
    assert parse_body(ChatCompletionRequest, chat(max_tokens=7)).to_canonical().max_tokens == 7


def test_stop_list_kept_in_order() -> None:
    req = parse_body(ChatCompletionRequest, chat(stop=["b", "a", "b"])).to_canonical()
    assert req.stop == ["b", "a", "b"]
    assert parse_body(ChatCompletionRequest, chat(stop=["x"] * MAX_STOP)).to_canonical().stop == ["x"] * MAX_STOP
    assert parse_body(ChatCompletionRequest, chat(stop=None)).to_canonical().stop == []


def test_response_format_json_object() -> None:
    req = parse_body(ChatCompletionRequest, chat(response_format={"type": "json_object"})).to_canonical()
    assert req.constraint == OutputConstraint(kind="json")


def test_response_format_json_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    req = parse_body(ChatCompletionRequest, body).to_canonical()
    assert req.constraint == OutputConstraint(kind="json_schema", json_schema=schema)


def test_response_format_text_is_no_constraint() -> None:
    req = parse_body(ChatCompletionRequest, chat(response_format={"type": "text"})).to_canonical()
    assert req.constraint is None


def test_completion_body_to_canonical() -> None:
    req = parse_body(CompletionRequest, completion(stop=["."], temperature=1.5, seed=3)).to_canonical()
    assert req.prompt == "Once upon a time"
    assert req.messages is None
    assert req.max_tokens == 16  # OpenAI's default for /v1/completions
    assert req.stop == ["."]
    assert req.sampling.temperature == 1.5
    assert req.sampling.seed == 3
    assert req.constraint is None


def test_completion_prompt_list_of_one() -> None:
    req = parse_body(CompletionRequest, completion(prompt=["only one"], max_tokens=3)).to_canonical()
    assert req.prompt == "only one"
    assert req.max_tokens == 3


CHAT_ERRORS = [
    ("temperature-3", chat(temperature=3), "temperature"),
    ("negative-temperature", chat(temperature=-0.5), "temperature"),
    ("top_p-2", chat(top_p=2), "top_p"),
    ("n-2", chat(n=2), "n"),
    ("empty-messages", chat(messages=[]), "messages"),
    ("messages-not-a-list", chat(messages="hi"), "messages"),
    ("missing-messages", {"model": "m"}, "messages"),
    ("missing-model", {"messages": USER}, "model"),
    ("empty-model", chat(model=""), "model"),
    ("wrong-role", chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (
        "wrong-role-second",
        chat(messages=[{"role": "user", "content": "x"}, {"role": "wizard", "content": "y"}]),
        "messages[1].role",
    ),
    ("content-number", chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (
        "image-part",
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        "messages[0].content",
    ),
    ("tool-without-function", chat(tools=[{"type": "function"}]), "tools[0].function"),
    (
        "tool-bad-name",
        chat(tools=[{"type": "function", "function": {"name": "no spaces allowed"}}]),
        "tools[0].function.name",
    ),
    ("stop-17", chat(stop=["x"] * (MAX_STOP + 1)), "stop"),
    ("empty-stop-string", chat(stop=""), "stop"),
    ("empty-stop-in-list", chat(stop=["a", ""]), "stop"),
    ("stop-number", chat(stop=5), "stop"),
    ("max_tokens-0", chat(max_tokens=0), "max_tokens"),
    ("max_completion_tokens-0", chat(max_completion_tokens=0), "max_completion_tokens"),
    ("logprobs", chat(logprobs=True), "logprobs"),
    ("json_schema-without-schema", chat(response_format={"type": "json_schema"}), "response_format"),
    ("unknown-response-format", chat(response_format={"type": "yaml"}), "response_format.type"),
    ("presence_penalty-3", chat(presence_penalty=3), "presence_penalty"),
    ("seed-too-big", chat(seed=2**64), "seed"),
    ("stream-not-bool", chat(stream="often"), "stream"),
]


@pytest.mark.parametrize(("body", "param"), [c[1:] for c in CHAT_ERRORS], ids=[c[0] for c in CHAT_ERRORS])
def test_invalid_chat_body(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ChatCompletionRequest, body)
    exc = caught.value
    assert exc.param == param
    assert exc.status == 400
    assert exc.code == "invalid_value"
    assert exc.message.startswith(f"{param}: ")


def test_tools_parse_into_the_canonical_request() -> None:
    body = parse_body(ChatCompletionRequest, chat(tools=[{"type": "function", "function": {"name": "f"}}]))
    req = body.to_canonical()
    assert [t.name for t in req.tools] == ["f"] and req.tool_choice.mode == "auto"


def test_stop_limit_message() -> None:
    with pytest.raises(InvalidRequest, match=f"at most {MAX_STOP} stop sequences"):
        parse_body(ChatCompletionRequest, chat(stop=["x"] * (MAX_STOP + 1)))
    with pytest.raises(InvalidRequest, match="must not be empty"):
        parse_body(ChatCompletionRequest, chat(stop=""))


def test_several_problems_are_counted() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ChatCompletionRequest, chat(temperature=3, n=2))
    assert "(and 1 more problem(s))" in caught.value.message


COMPLETION_ERRORS = [
    ("prompt-list-of-two", completion(prompt=["a", "b"]), "prompt"),
    ("prompt-empty-list", completion(prompt=[]), "prompt"),
    ("missing-prompt", {"model": "m"}, "prompt"),
    ("prompt-number", completion(prompt=5), "prompt"),
    ("echo", completion(echo=True), "echo"),
    ("best_of-2", completion(best_of=2), "best_of"),
    ("suffix", completion(suffix="!"), "suffix"),
    ("n-3", completion(n=3), "n"),
    ("stop-empty", completion(stop=[""]), "stop"),
]


@pytest.mark.parametrize(("body", "param"), [c[1:] for c in COMPLETION_ERRORS], ids=[c[0] for c in COMPLETION_ERRORS])
def test_invalid_completion_body(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(CompletionRequest, body)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_prompt_list_message() -> None:
    with pytest.raises(InvalidRequest, match="exactly one prompt"):
        parse_body(CompletionRequest, completion(prompt=["a", "b"]))


@pytest.mark.parametrize(("body", "kind"), [([USER], "list"), ("hello", "str"), (None, "NoneType"), (3, "int")])
def test_body_must_be_an_object(body: Any, kind: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ChatCompletionRequest, body)
    exc = caught.value
    assert exc.param is None
    assert exc.code == "invalid_type"
    assert "must be a JSON object" in exc.message
    assert kind in exc.message
