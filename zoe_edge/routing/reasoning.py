"""A model's thinking apart from its answer: ``<think>`` blocks in generated text become ReasoningDelta.

Pure (no I/O, no aiohttp): :func:`detect` reads a chat template's text, :class:`ThinkSplitter` splits
text incrementally, :func:`split_reasoning` applies it to a canonical event stream. Dispatch wraps a
local target's stream with it; cloud providers report reasoning themselves.

What reasoning models emit, from their chat templates (llama.cpp's ``models/templates``):

* Qwen3: the generation prompt is ``<|im_start|>assistant\\n``, the model writes
  ``<think>\\n...\\n</think>\\n\\n`` then its answer; ``enable_thinking=False`` makes the template
  prefill an empty ``<think>\\n\\n</think>\\n\\n`` so the output has no block at all.
* DeepSeek-R1 (distills): the generation prompt ends with the Assistant marker and ``<think>\\n``, so the output
  starts inside the block and has only ``</think>``. :func:`detect` finds this by rendering the
  generation prompt (``opens_in_prompt``).
* Seed-OSS: ``<seed:think>...</seed:think>``, the same shape with other tags.
* gpt-oss: a channel format (``<|channel|>analysis<|message|>...``) made of control tokens that the
  worker's detokeniser drops; not split here (see :data:`CHANNEL_MARKER`).

As llama.cpp's server and Ollama do, a block opens only at the start of the output (after blank
space): later the tags are answer text a model may be quoting. The whitespace framing the block
(the template's newlines) is trimmed from both parts; an output without a block passes unchanged.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from zoe_edge.canonical import Event, ReasoningDelta, TextDelta, ToolCall

ReasoningMode = Literal["auto", "think-tags", "none"]
Piece = TextDelta | ReasoningDelta


@dataclass(frozen=True)
class Tags:
    open: str
    close: str


THINK = Tags("<think>", "</think>")
SEED_THINK = Tags("<seed:think>", "</seed:think>")
# more specific pairs first: "<seed:think>" does not contain "<think>", but keep the order meaningful
KNOWN_TAGS = (SEED_THINK, THINK)
CHANNEL_MARKER = "<|channel|>"
# Qwen3's switch: the template prefills an empty block when the variable is false
_ENABLE_THINKING = re.compile(r"\benable_thinking\b")


@dataclass(frozen=True)
class ReasoningSetup:
    """How one model's output is split; ``tags`` ``None``: not at all."""

    tags: Tags | None
    reason: str
    opens_in_prompt: bool = False  # the template's generation prompt ends inside an open block
    opens_in_prompt_unthinking: bool = False  # the same, rendered with enable_thinking=False
    can_disable: bool = False  # the template reads enable_thinking

    def starts_inside(self, think: bool | None, switched: bool) -> bool:
        """Whether the output begins inside the block; ``switched``: the prompt was rendered with
        :func:`template_kwargs` for ``think`` (so a template that closes the block when asked is honoured)."""
        if switched and think is False and self.can_disable:
            return self.opens_in_prompt_unthinking
        return self.opens_in_prompt

    def template_kwargs(self, think: bool | None) -> dict[str, Any]:
        return template_kwargs(self, think)


NO_SPLIT = ReasoningSetup(None, "reasoning: none")


def template_kwargs(setup: ReasoningSetup, think: bool | None) -> dict[str, Any]:
    """Extra variables for the chat template render so it honours ``think`` (for the worker's formatter)."""
    if think is False and setup.can_disable:
        return {"enable_thinking": False}
    return {}


def _render_generation_prompt(template: str, **extra: Any) -> str | None:
    """The template's prompt for one user turn, as the worker's formatter renders it; ``None`` if it fails."""
    try:
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 comes with llama-cpp-python
        return None

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        return env.from_string(template).render(
            messages=[{"role": "user", "content": "Hi"}],
            add_generation_prompt=True,
            bos_token="",
            eos_token="",
            tools=None,
            raise_exception=raise_exception,
            strftime_now=lambda fmt: "",
            **extra,
        )
    except Exception:  # any template error: fall back to reading the text
        return None


def _opens_in_prompt(template: str, tags: Tags, **extra: Any) -> bool:
    rendered = _render_generation_prompt(template, **extra)
    if rendered is not None:
        return rendered.rstrip().endswith(tags.open)
    # unrenderable: look at what follows the last add_generation_prompt test in the source
    at = template.rfind("add_generation_prompt")
    tail = template[at:] if at >= 0 else ""
    return tags.open in tail and tags.close not in tail


def detect(template: str | None) -> ReasoningSetup:
    """``auto``: split when the chat template carries a known tag pair."""
    if not template:
        return ReasoningSetup(None, "no chat template to detect reasoning from")
    for tags in KNOWN_TAGS:
        if tags.close in template:
            return _with_tags(template, tags, f"chat template has {tags.open}")
    if CHANNEL_MARKER in template:
        return ReasoningSetup(None, "chat template uses a channel format, which is not split")
    return ReasoningSetup(None, "chat template has no reasoning markers")


def _with_tags(template: str | None, tags: Tags, reason: str) -> ReasoningSetup:
    if not template:
        return ReasoningSetup(tags, reason)
    can_disable = bool(_ENABLE_THINKING.search(template))
    return ReasoningSetup(
        tags,
        reason,
        opens_in_prompt=_opens_in_prompt(template, tags),
        opens_in_prompt_unthinking=_opens_in_prompt(template, tags, enable_thinking=False) if can_disable else False,
        can_disable=can_disable,
    )


def resolve(mode: ReasoningMode, template: str | None) -> ReasoningSetup:
    """The registry's ``reasoning:`` option with the model's chat template (``None`` if unknown)."""
    if mode == "none":
        return NO_SPLIT
    if mode == "think-tags":
        found = detect(template)
        tags = found.tags or THINK
        return _with_tags(template, tags, f"reasoning: think-tags ({tags.open})")
    return detect(template)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``: it may still become the tag."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ThinkSplitter:
    """Incremental: :meth:`feed` the text deltas as they come, :meth:`flush` at the end (or before a call).

    Only a possible tag (``<thi``), the blank space before a possible block and the blank space at the
    end of reasoning (trimmed if the block closes next) are held back; everything else is released at
    once, so a stream stays a stream. The result does not depend on how the text is cut.
    """

    def __init__(self, tags: Tags = THINK, *, inside: bool = False) -> None:
        self.tags = tags
        self._state: Literal["start", "think", "answer"] = "think" if inside else "start"
        self._buf = ""  # text not yet decided
        self._lead = inside  # trim blank space at the start of the current part
        self._blank = ""  # trailing blank space of reasoning, dropped if the block closes next

    @property
    def thinking(self) -> bool:
        return self._state == "think"

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
        while self._step(out):
            pass
        return _merged(out)

    def _step(self, out: list[Piece]) -> bool:
        """Decide what the buffer allows; ``True`` when the state changed and there may be more to decide."""
        if self._state == "start":
            head = self._buf.lstrip()
            if not head or (len(head) < len(self.tags.open) and self.tags.open.startswith(head)):
                return False  # blank, or a tag still arriving
            if head.startswith(self.tags.open):
                self._buf = head[len(self.tags.open) :]
                self._state, self._lead = "think", True
            else:
                self._state = "answer"  # no block: the text as it came, leading space and all
            return True
        if self._lead:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return False
            self._lead = False
        if self._state == "answer":
            if self._buf:
                out.append(TextDelta(self._buf))
                self._buf = ""
            return False
        at = self._buf.find(self.tags.close)
        if at >= 0:
            self._reason(out, self._blank + self._buf[:at], final=True)
            self._buf = self._buf[at + len(self.tags.close) :]
            self._state, self._lead = "answer", True
            return True
        keep = _partial_suffix(self._buf, self.tags.close)
        ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
        self._reason(out, self._blank + ready, final=False)
        return False

    def _reason(self, out: list[Piece], text: str, *, final: bool) -> None:
        body = text.rstrip()
        self._blank = "" if final else text[len(body) :]
        if body:
            out.append(ReasoningDelta(body))

    def flush(self) -> list[Piece]:
        """Release what is held: the stream ended, or a call came (a call is answer, so thinking ends)."""
        out: list[Piece] = []
        if self._state == "start" and self._buf:
            out.append(TextDelta(self._buf))  # blank space or a tag that never completed: it was text
        elif self._state == "think" and not self._lead:
            self._reason(out, self._blank + self._buf, final=True)  # a partial close tag is reasoning text
        self._buf, self._blank, self._lead = "", "", False
        self._state = "answer"
        return out


def _merged(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for piece in pieces:
        last = out[-1] if out else None
        if isinstance(last, TextDelta) and isinstance(piece, TextDelta):
            out[-1] = TextDelta(last.text + piece.text)
        elif isinstance(last, ReasoningDelta) and isinstance(piece, ReasoningDelta):
            out[-1] = ReasoningDelta(last.text + piece.text)
        else:
            out.append(piece)
    return out


def split_text(text: str, tags: Tags = THINK, *, inside: bool = False) -> tuple[str, str]:
    """(reasoning, answer) of a whole output."""
    splitter = ThinkSplitter(tags, inside=inside)
    pieces = splitter.feed(text) + splitter.flush()
    thought = "".join(p.text for p in pieces if isinstance(p, ReasoningDelta))
    answer = "".join(p.text for p in pieces if isinstance(p, TextDelta))
    return thought, answer


async def split_reasoning(
    events: AsyncGenerator[Event, None], setup: ReasoningSetup, think: bool | None, *, switched: bool = False
) -> AsyncGenerator[Event, None]:
    """``events`` with thinking as ReasoningDelta; with ``think`` False, thinking the model still does is dropped.

    Every other event (calls, the finish, an error) passes unchanged and in order, after the text that
    came before it; closing this stream closes ``events`` (which cancels the generation).
    """
    splitter = ThinkSplitter(setup.tags, inside=setup.starts_inside(think, switched)) if setup.tags else None
    keep = think is not False

    def shown(pieces: list[Piece]) -> list[Piece]:
        return pieces if keep else [p for p in pieces if isinstance(p, TextDelta)]

    async with aclosing(events) as source:
        async for event in source:
            if isinstance(event, TextDelta) and splitter is not None:
                for piece in shown(splitter.feed(event.text)):
                    yield piece
                continue
            if isinstance(event, ReasoningDelta):
                if keep:
                    yield event
                continue
            if splitter is not None:
                for piece in shown(splitter.flush()):
                    yield piece
                if not isinstance(event, ToolCall):
                    splitter = None  # the finish or an error: nothing more to split
            yield event
        if splitter is not None:
            for piece in shown(splitter.flush()):
                yield piece
