"""The model-free parts of the worker engine: stop-string holdback and the bundled chat templates."""

from __future__ import annotations

import random

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from zoe_edge.worker.engine import stop_holdback
from zoe_edge.worker.templates import bundled_template


@pytest.mark.parametrize(
    ("text", "stops", "keep"),
    [
        ("hello", [], 0),  # no stops: nothing held back
        ("", ["</s>"], 0),  # nothing to hold
        ("hello", ["</s>"], 0),  # no prefix of the stop at the end
        ("hello <", ["</s>"], 1),  # one-char prefix
        ("hello </", ["</s>"], 2),
        ("hello </s", ["</s>"], 3),  # the longest proper prefix
        ("</", ["</s>"], 2),  # the whole text is a prefix of the stop
        ("<", ["<|im_end|>"], 1),
        ("x<|im_e", ["<|im_end|>"], 6),
        ("hello </s>", ["</s>"], 0),  # a complete stop is the caller's job (find), not holdback
        ("User", ["User:"], 4),
        ("Use", ["User:"], 3),
        ("abc\n", ["\n\n"], 1),
        ("X", ["X"], 0),  # a one-char stop never needs holding back
        ("hello wor", ["world", "or"], 3),  # the longest holdback across stops
        ("hello wor", ["or", "world"], 3),  # regardless of order
        ("ab", ["bc", "abc"], 2),  # "ab" of "abc" beats "b" of "bc"
        ("ab", ["abc", "bc"], 2),
        ("aaa", ["aab"], 2),  # overlapping self-similar prefix
        ("abab", ["abac"], 2),  # "ab" matches, "aba" does not
        ("xaba", ["abac"], 3),
        ("xyz", ["", "z!"], 1),  # an empty stop is harmless
        ("日本", ["本語"], 1),
    ],
)
def test_stop_holdback(text: str, stops: list[str], keep: int) -> None:
    assert stop_holdback(text, stops) == keep


def _reference(text: str, stops: list[str]) -> int:
    best = 0
    for stop in stops:
        for n in range(1, len(stop)):
            if n <= len(text) and text.endswith(stop[:n]):
                best = max(best, n)
    return best


def test_stop_holdback_matches_brute_force() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        text = "".join(rng.choice("ab<") for _ in range(rng.randint(0, 8)))
        stops = ["".join(rng.choice("ab<") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(0, 3))]
        assert stop_holdback(text, stops) == _reference(text, stops), (text, stops)


# --- bundled templates -------------------------------------------------------------------------


def _render(name: str, messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
    source = bundled_template(name)
    assert source is not None
    # the same environment settings llama-cpp-python's Jinja2ChatFormatter uses
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source).render(
        messages=messages, bos_token="<bos>", eos_token="<eos>", add_generation_prompt=generation_prompt
    )


def test_bundled_template_missing() -> None:
    assert bundled_template("nope") is None


@pytest.mark.parametrize("name", ["gemma", "chatml"])
def test_bundled_templates_exist(name: str) -> None:
    source = bundled_template(name)
    assert source and "messages" in source


def test_gemma_system_goes_into_first_user_turn() -> None:
    prompt = _render("gemma", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert prompt.endswith("<start_of_turn>model\n")
    assert "system" not in prompt  # Gemma has no system role


def test_gemma_multi_turn() -> None:
    prompt = _render(
        "gemma",
        [
            {"role": "system", "content": "S1"},
            {"role": "system", "content": "S2"},
            {"role": "user", "content": "  Q1  "},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
    )
    assert prompt == (
        "<bos><start_of_turn>user\nS1\n\nS2\n\nQ1<end_of_turn>\n"
        "<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nQ2<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert prompt.count("S1") == 1  # the system text opens only the first turn


def test_gemma_without_generation_prompt() -> None:
    prompt = _render("gemma", [{"role": "user", "content": "Hi"}], generation_prompt=False)
    assert prompt == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_gemma_system_before_assistant_greeting_goes_to_user_turn() -> None:
    prompt = _render(
        "gemma",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Hi"},
        ],
    )
    model_turn = prompt.split("<start_of_turn>model\n")[1].split("<end_of_turn>")[0]
    assert "Be brief." not in model_turn, prompt
    assert "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>" in prompt


def test_chatml_render() -> None:
    prompt = _render("chatml", [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])
    assert prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_templates_render_the_same_through_llama_cpp_formatter() -> None:
    """The engine renders through llama-cpp-python's formatter; it must agree with plain jinja2."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    for name in ("gemma", "chatml"):
        source = bundled_template(name)
        assert source is not None
        formatter = Jinja2ChatFormatter(template=source, eos_token="<eos>", bos_token="<bos>")
        assert formatter(messages=messages).prompt == _render(name, messages)
