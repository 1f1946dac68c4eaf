"""The one request model and the one event stream.

Every front parses its wire format into :class:`GenerationRequest`; the worker and every provider
answer with an async stream of :data:`Event`. Fronts render events back into their wire format.
Nothing else in the code base knows what a wire format looks like.

Events are plain frozen dataclasses rather than pydantic models because one is built and
serialised per generated token: the hot path stays a dict literal.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoe_edge.errors import Failure, ZoeError, error_for_status

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


TOOL_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class Priority(str, enum.Enum):
    """Who waits for whom on the one local model: voice turns before chat before automations."""

    INTERACTIVE = "interactive"
    NORMAL = "normal"
    BACKGROUND = "background"

    @property
    def rank(self) -> int:
        """0 is served first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.INTERACTIVE: 0, Priority.NORMAL: 1, Priority.BACKGROUND: 2}


class ToolCallRef(BaseModel):
    """A call the assistant made earlier in the conversation, as the history carries it."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str = ""
    name: str | None = None
    tool_calls: list[ToolCallRef] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: which call this result answers


class Tool(BaseModel):
    """A function the model may call; ``parameters`` is the JSON schema of its arguments object."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolChoice(BaseModel):
    """``auto``: text or a call; ``none``: text only; ``required``: some call; ``function``: a call to ``name``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None
    # with ``function``: a narrower schema for the call's arguments than the tool's own (every value it
    # allows, the tool's schema allows too). The call grammar enforces it while the prompt still shows
    # the tools exactly as the client sent them, so a long tool prompt stays one reusable prefix.
    # Set by the assist turn planner only; no front parses it from a client.
    arguments: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if (self.mode == "function") != (self.name is not None):
            raise ValueError("a name goes with mode 'function' and only with it")
        if self.arguments is not None and self.mode != "function":
            raise ValueError("an arguments schema goes with mode 'function' only")
        return self


class Sampling(BaseModel):
    """Sampling knobs; ``None`` means "use the model's default from the registry"."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None

    def merged_over(self, defaults: Sampling) -> Sampling:
        """This request's values where set, the registry's defaults elsewhere."""
        mine = self.model_dump(exclude_none=True)
        return defaults.model_copy(update=mine)


class OutputConstraint(BaseModel):
    """What shape the output must have; the worker turns it into a llama.cpp grammar."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["json", "json_schema"]
    json_schema: dict[str, Any] | None = None


class GenerationRequest(BaseModel):
    """One generation: either chat ``messages`` (rendered by the model's template) or a raw ``prompt``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[Message] | None = None
    prompt: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] = Field(default_factory=list)
    sampling: Sampling = Field(default_factory=Sampling)
    constraint: OutputConstraint | None = None
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice = Field(default_factory=ToolChoice)
    parallel_tool_calls: bool = False  # several calls in one answer only when a client asks
    # False: tools are offered in the prompt but the answer is decoded without the call grammar and
    # then parsed, calls returned as parsed (valid or not). Only `zoe-edge bench` sets it, to measure
    # what the grammar is worth; no API front exposes it.
    tool_grammar: bool = True
    stream: bool = False
    # whether the model may think before answering: None, as its template does by default; False, asked
    # not to where the template can say so (Ollama's think, OpenAI's reasoning_effort, Anthropic's thinking)
    think: bool | None = None
    # the context the client asks for (Ollama's options.num_ctx); None: the registry's n_ctx. The
    # supervisor's planner decides what it gets (see zoe_edge.supervisor.planner.choose_context)
    n_ctx: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _tools_consistent(self) -> GenerationRequest:
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        if self.tool_choice.mode in ("required", "function") and not self.tools:
            raise ValueError(f"tool_choice {self.tool_choice.mode!r} needs at least one tool")
        if self.tool_choice.name is not None and self.tool_choice.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.name!r}, which is not among the tools")
        if self.uses_tools and self.constraint is not None:
            # one grammar per answer: a call and a response_format cannot both constrain it
            raise ValueError("response_format cannot be combined with tools unless tool_choice is 'none'")
        return self

    @property
    def call_tools(self) -> list[Tool]:
        """The tools as the call grammar constrains them: ``tool_choice.arguments`` narrows its tool."""
        narrowed = self.tool_choice.arguments
        if narrowed is None:
            return self.tools
        chosen = self.tool_choice.name
        return [t.model_copy(update={"parameters": narrowed}) if t.name == chosen else t for t in self.tools]

    @property
    def uses_tools(self) -> bool:
        """Whether the output may be a tool call (tools offered and not switched off)."""
        return bool(self.tools) and self.tool_choice.mode != "none"


# --- the event stream -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timings:
    """Wall-clock figures measured in the worker around llama.cpp calls, in milliseconds."""

    prompt_ms: float = 0.0
    predicted_ms: float = 0.0  # decoding time, without the time the generation spent suspended
    load_ms: float = 0.0
    # a background generation suspended for an interactive request: how often, for how long, and what
    # saving and restoring its state cost (inside paused_ms)
    suspensions: int = 0
    paused_ms: float = 0.0
    suspend_cost_ms: float = 0.0

    def per_second(self, usage: Usage) -> dict[str, float]:
        def rate(n: int, ms: float) -> float:
            return round(n * 1000.0 / ms, 2) if ms > 0 else 0.0

        evaluated = usage.prompt_tokens - usage.cached_tokens
        return {
            "prompt_n": evaluated,
            "prompt_ms": round(self.prompt_ms, 3),
            "prompt_per_second": rate(evaluated, self.prompt_ms),
            "predicted_n": usage.completion_tokens,
            "predicted_ms": round(self.predicted_ms, 3),
            "predicted_per_second": rate(usage.completion_tokens, self.predicted_ms),
        }


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Thinking the model does before its answer (a ``<think>`` block, a template's reasoning channel).

    Fronts that have a field for it render it apart (``reasoning_content``, ``message.thinking``,
    reasoning items, ``thinking`` blocks); the others drop it, so it never reaches ``content``.
    """

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One complete call; ``arguments`` is an object (the Ollama front sends it as is, OpenAI as a string)."""

    index: int
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    usage: Usage
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A failure after the stream started; ``status`` is what it would have been before the first byte."""

    message: str
    code: str = "worker_failed"
    status: int = 500

    def as_exception(self) -> ZoeError:
        return error_for_status(self.status, self.message, code=self.code)

    @property
    def kind(self) -> Failure:
        return Failure.of(self.code, self.status)


Event = TextDelta | ReasoningDelta | ToolCall | Finish | ErrorEvent


def _timings(timings: Timings) -> dict[str, Any]:
    """The timings as a frame carries them; the suspension figures only when there was one (most answers,
    and every cached one, were never paused: the frames and the cache stay as small as they were)."""
    out = asdict(timings)
    if not timings.suspensions:
        for key in ("suspensions", "paused_ms", "suspend_cost_ms"):
            del out[key]
    return out


def event_to_wire(event: Event) -> dict[str, Any]:
    """Serialise an event for the worker IPC (one JSON frame per event)."""
    if isinstance(event, TextDelta):
        return {"t": "text", "text": event.text}
    if isinstance(event, ReasoningDelta):
        return {"t": "reasoning", "text": event.text}
    if isinstance(event, ToolCall):
        return {"t": "tool_call", "index": event.index, "id": event.id, "name": event.name, "args": event.arguments}
    if isinstance(event, Finish):
        return {"t": "finish", "reason": event.reason, "usage": asdict(event.usage), "timings": _timings(event.timings)}
    return {"t": "error", "message": event.message, "code": event.code, "status": event.status}


def event_from_wire(frame: dict[str, Any]) -> Event:
    kind = frame.get("t")
    if kind == "text":
        return TextDelta(str(frame["text"]))
    if kind == "reasoning":
        return ReasoningDelta(str(frame["text"]))
    if kind == "tool_call":
        return ToolCall(int(frame["index"]), str(frame["id"]), str(frame["name"]), dict(frame["args"]))
    if kind == "finish":
        return Finish(frame["reason"], Usage(**frame["usage"]), Timings(**frame["timings"]))
    if kind == "error":
        return ErrorEvent(str(frame["message"]), str(frame.get("code", "worker_failed")), int(frame.get("status", 500)))
    raise ValueError(f"unknown event frame type {kind!r}")
