"""The reasoning splitter on reasoning models' output (fixtures in tests/fixtures/reasoning/): whole, cut at
every point and in random chunks, over the canonical event stream, and detection from chat templates."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoe_edge.canonical import ErrorEvent, Event, Finish, ReasoningDelta, TextDelta, ToolCall, Usage
from zoe_edge.routing.reasoning import (
    NO_SPLIT,
    SEED_THINK,
    THINK,
    ReasoningSetup,
    ThinkSplitter,
    detect,
    resolve,
    split_reasoning,
    split_text,
    template_kwargs,
)
from zoe_edge.worker.templates import bundled_formats, bundled_template

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reasoning"
CASES: list[dict[str, str]] = json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))
IDS = [c["name"] for c in CASES]


def template(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def setup_of(case: dict[str, str]) -> ReasoningSetup:
    return detect(template(case["template"]))


def run(pieces: list[str], setup: ReasoningSetup) -> tuple[str, str, list[TextDelta | ReasoningDelta]]:
    """Feed ``pieces`` one by one: (reasoning, answer, every event released)."""
    assert setup.tags is not None
    splitter = ThinkSplitter(setup.tags, inside=setup.starts_inside(None, switched=False))
    out: list[TextDelta | ReasoningDelta] = []
    for piece in pieces:
        out += splitter.feed(piece)
    out += splitter.flush()
    thought = "".join(p.text for p in out if isinstance(p, ReasoningDelta))
    answer = "".join(p.text for p in out if isinstance(p, TextDelta))
    return thought, answer, out


# --- detection -----------------------------------------------------------------------------------


def test_qwen3_template_thinks_after_the_prompt_and_can_be_switched_off() -> None:
    setup = detect(template("qwen3.jinja"))
    assert setup.tags == THINK
    assert not setup.opens_in_prompt  # the model writes <think> itself
    assert setup.can_disable and not setup.opens_in_prompt_unthinking
    assert template_kwargs(setup, False) == {"enable_thinking": False}
    assert template_kwargs(setup, None) == {} and template_kwargs(setup, True) == {}


def test_qwen3_switched_off_prefills_an_empty_block() -> None:
    """What passing template_kwargs(think False) to the formatter does: the prompt closes the block."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    prompt = env.from_string(template("qwen3.jinja")).render(
        messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True, enable_thinking=False
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_deepseek_r1_template_opens_the_block_in_the_prompt() -> None:
    setup = detect(template("deepseek-r1.jinja"))
    assert setup.tags == THINK and setup.opens_in_prompt and not setup.can_disable
    assert setup.starts_inside(None, switched=False) and setup.starts_inside(False, switched=True)


def test_seed_oss_tags() -> None:
    setup = detect(template("seed-oss.jinja"))
    assert setup.tags == SEED_THINK and not setup.opens_in_prompt


def test_an_unrenderable_template_is_read_from_its_text() -> None:
    broken = "{{ m.split('</think>') | nope }}{% if add_generation_prompt %}{{ '<|Assistant|><think>\\n' }}{% endif %}"
    setup = detect(broken)
    assert setup.tags == THINK and setup.opens_in_prompt


@pytest.mark.parametrize("name", bundled_formats())
def test_bundled_templates_have_no_reasoning(name: str) -> None:
    assert detect(bundled_template(name)).tags is None


def test_channel_format_and_no_template_are_not_split() -> None:
    assert detect("<|start|>assistant<|channel|>final<|message|>").tags is None
    assert detect(None).tags is None and detect("").tags is None


def test_registry_modes() -> None:
    assert resolve("none", template("qwen3.jinja")) is NO_SPLIT
    assert resolve("auto", bundled_template("chatml")).tags is None
    forced = resolve("think-tags", None)  # no template to read: <think>, output starting outside
    assert forced.tags == THINK and not forced.opens_in_prompt
    assert resolve("think-tags", template("deepseek-r1.jinja")).opens_in_prompt
    assert resolve("think-tags", template("seed-oss.jinja")).tags == SEED_THINK


def test_smollm2_template_has_no_reasoning(smollm_path: Path) -> None:
    from zoe_edge.gguf_info import read_chat_template

    real = read_chat_template(smollm_path)
    assert real is not None and "<|im_start|>" in real
    assert detect(real).tags is None


# --- the fixtures whole, and the framing they were written in --------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_whole_output(case: dict[str, str]) -> None:
    setup = setup_of(case)
    assert setup.tags is not None
    got = split_text(case["completion"], setup.tags, inside=setup.starts_inside(None, switched=False))
    assert got == (case["reasoning"], case["answer"])


# the template cuts a history turn at its *last* </think>, so an answer quoting the tag is left out here
FRAMED = [c for c in CASES if c["template"] == "qwen3.jinja" and c["reasoning"] and c["answer"]]


@pytest.mark.parametrize("case", [c for c in FRAMED if "</think>" not in c["answer"]], ids=lambda c: c["name"])
def test_qwen3_fixtures_are_in_the_templates_own_framing(case: dict[str, str]) -> None:
    """The template re-renders a finished turn as <think>\\n{reasoning}\\n</think>\\n\\n{answer}: the
    framing the model was trained to emit, which the fixture's completions use."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": case["completion"]}]
    rendered = env.from_string(template("qwen3.jinja")).render(messages=history, add_generation_prompt=False)
    turn = rendered.split("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    assert turn == case["completion"]
    assert turn == f"<think>\n{case['reasoning']}\n</think>\n\n{case['answer']}"


# --- any cut gives the same result -----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_cut_point(case: dict[str, str]) -> None:
    text, setup = case["completion"], setup_of(case)
    whole = (case["reasoning"], case["answer"])
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]], setup)[:2] == whole, f"cut at {i}: {text[:i]!r} | {text[i:]!r}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_pair_of_cuts_around_the_tags(case: dict[str, str]) -> None:
    """Three pieces, both cuts near a tag (where a partial tag is held back)."""
    text, setup = case["completion"], setup_of(case)
    assert setup.tags is not None
    near: set[int] = set()
    for tag in (setup.tags.open, setup.tags.close):
        at = text.find(tag)
        if at >= 0:
            near.update(range(max(0, at - 3), min(len(text), at + len(tag) + 3) + 1))
    whole = (case["reasoning"], case["answer"])
    for i in sorted(near):
        for j in sorted(n for n in near if n >= i):
            assert run([text[:i], text[i:j], text[j:]], setup)[:2] == whole, (i, j)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_one_character_at_a_time(case: dict[str, str]) -> None:
    assert run(list(case["completion"]), setup_of(case))[:2] == (case["reasoning"], case["answer"])


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_random_chunkings(case: dict[str, str], cuts: list[int]) -> None:
    text = case["completion"]
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert "".join(pieces) == text
    assert run(pieces, setup_of(case))[:2] == (case["reasoning"], case["answer"])


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("<>/thinkab \n")), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    inside=st.booleans(),
)
def test_tag_like_noise_splits_the_same_however_cut(text: str, cuts: list[int], inside: bool) -> None:
    setup = ReasoningSetup(THINK, "test", opens_in_prompt=inside)
    whole = run([text], setup)[:2]
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert run(pieces, setup)[:2] == whole
    thought, answer = whole
    if not inside and not text.lstrip().startswith("<think>"):
        assert (thought, answer) == ("", text)  # no block: the text exactly as it came


# --- streaming behaviour ---------------------------------------------------------------------------


def test_text_is_released_as_soon_as_it_is_decided() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("  ") == []  # may still be blank space before a block
    assert splitter.feed("<thi") == []  # may still be the tag
    assert splitter.feed("nk>\nLet me see") == [ReasoningDelta("Let me see")]
    assert splitter.feed(" now.\n") == [ReasoningDelta(" now.")]  # the newline waits: it may frame </think>
    assert splitter.feed("</th") == []
    assert splitter.feed("ink>\n\nDone") == [TextDelta("Done")]
    assert splitter.feed(" <think>x</think>") == [TextDelta(" <think>x</think>")]  # answer text now
    assert splitter.flush() == []


def test_plain_text_passes_at_once_and_unchanged() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("Hello") == [TextDelta("Hello")]
    assert splitter.feed(" <think>") == [TextDelta(" <think>")]


def test_a_tag_that_never_completes_is_text() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("\n<thin") == []
    assert splitter.flush() == [TextDelta("\n<thin")]


# --- over the canonical event stream ---------------------------------------------------------------

QWEN3 = detect(template("qwen3.jinja"))
R1 = detect(template("deepseek-r1.jinja"))
FINISH = Finish("stop", Usage(10, 20))


async def scripted(events: list[Event], closed: list[bool] | None = None) -> AsyncGenerator[Event, None]:
    try:
        for event in events:
            yield event
    finally:
        if closed is not None:
            closed.append(True)


async def gather(events: list[Event], setup: ReasoningSetup, think: bool | None = None) -> list[Event]:
    return [e async for e in split_reasoning(scripted(events), setup, think)]


def deltas(text: str, size: int = 3) -> list[Event]:
    return [TextDelta(text[i : i + size]) for i in range(0, len(text), size)]


def joined(events: list[Event], kind: type[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_stream_of_deltas(case: dict[str, str]) -> None:
    out = await gather([*deltas(case["completion"]), FINISH], setup_of(case))
    assert joined(out, ReasoningDelta) == case["reasoning"]
    assert joined(out, TextDelta) == case["answer"]
    assert out[-1] == FINISH


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_think_false_drops_the_thinking_a_model_still_does(case: dict[str, str]) -> None:
    out = await gather([*deltas(case["completion"]), FINISH], setup_of(case), think=False)
    assert not any(isinstance(e, ReasoningDelta) for e in out)
    assert joined(out, TextDelta) == case["answer"]


async def test_calls_pass_untouched_and_in_order() -> None:
    call = ToolCall(0, "call_1", "HassTurnOn", {"name": "Kitchen Ceiling", "area": "Kitchen"})
    second = ToolCall(1, "call_2", "GetLiveContext", {})
    script: list[Event] = [
        *deltas("<think>\nThe user wants the kitchen light on; HassTurnOn fits.\n</th"),
        call,
        second,
        TextDelta("Done."),
        Finish("tool_calls", Usage(10, 20)),
    ]
    out = await gather(script, QWEN3)
    calls = [e for e in out if isinstance(e, ToolCall)]
    assert calls == [call, second] and calls[0] is call  # the same objects, arguments untouched
    at = out.index(call)
    # what the model thought before the call is reasoning, released before the call, never in it
    assert joined(out[:at], ReasoningDelta) == "The user wants the kitchen light on; HassTurnOn fits.\n</th"
    assert not any(isinstance(e, TextDelta) for e in out[:at])
    assert out[at + 2 :] == [TextDelta("Done."), Finish("tool_calls", Usage(10, 20))]


async def test_reasoning_events_from_the_worker_pass_or_drop() -> None:
    script: list[Event] = [ReasoningDelta("hmm"), TextDelta("Hi"), FINISH]
    assert await gather(script, NO_SPLIT) == script
    assert await gather(script, NO_SPLIT, think=False) == [TextDelta("Hi"), FINISH]


async def test_no_reasoning_template_leaves_the_stream_as_it_is() -> None:
    script: list[Event] = [TextDelta("  <think>"), TextDelta(" is a tag"), FINISH]
    assert await gather(script, detect(bundled_template("chatml"))) == script


async def test_an_error_ends_the_stream_after_what_was_held() -> None:
    error = ErrorEvent("worker crashed", "worker_failed", 500)
    out = await gather([TextDelta("Okay, so</thi"), error], R1)
    assert out == [ReasoningDelta("Okay, so"), ReasoningDelta("</thi"), error]


async def test_closing_the_split_stream_closes_the_source() -> None:
    closed: list[bool] = []
    stream = split_reasoning(scripted([*deltas("<think>a</think>Hello there"), FINISH], closed), QWEN3, None)
    assert await anext(stream) == ReasoningDelta("a")
    await stream.aclose()
    assert closed == [True]


def test_the_worker_s_formatter_turns_qwen3_thinking_off_with_enable_thinking() -> None:
    """The worker renders with llama-cpp-python's formatter and passes enable_thinking=False for think: false;
    a Qwen3 template then opens an empty think block itself, so the model answers without thinking."""
    from zoe_edge.worker import llama_compat

    template = (Path(__file__).resolve().parents[1] / "fixtures" / "reasoning" / "qwen3.jinja").read_text()
    formatter = llama_compat.chat_formatter(template, "<|im_end|>", "")
    messages = [{"role": "user", "content": "Is the kitchen light on?"}]
    default = formatter(messages=messages).prompt
    off = formatter(messages=messages, enable_thinking=False).prompt
    assert "<think>" not in default.rsplit("<|im_start|>assistant", 1)[1]
    assert off.rsplit("<|im_start|>assistant", 1)[1].strip() == "<think>\n\n</think>"
