"""The Responses API's request body, its input items, and the canonical request they make.

Input items are normalised (:func:`normalise`) into the shape the API returns them in (ids,
typed content parts, a status) before they are stored, and a stored conversation is read back
through the same item models, so one conversion turns both a client's items and a stored
history into canonical messages.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, PrivateAttr, Tag, field_validator, model_validator

from zoe_edge.api.common import Lenient, canonical_request, parse_arguments
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import (
    TOOL_NAME,
    GenerationRequest,
    Message,
    OutputConstraint,
    Sampling,
    Tool,
    ToolCallRef,
    ToolChoice,
)
from zoe_edge.errors import InvalidRequest

ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- input items ------------------------------------------------------------------------------


class TextPart(Lenient):
    type: Literal["input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"]
    text: str = ""
    refusal: str | None = None

    @property
    def value(self) -> str:
        return self.refusal if self.type == "refusal" and self.refusal is not None else self.text


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(p.value for p in content)


class MessageItem(Lenient):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[TextPart]

    def normalised(self) -> dict[str, Any]:
        part = "output_text" if self.role == "assistant" else "input_text"
        content: dict[str, Any] = {"type": part, "text": _text(self.content)}
        if part == "output_text":
            content["annotations"] = []
        return {
            "type": "message",
            "id": self.id or new_id("msg"),
            "role": self.role,
            "content": [content],
            "status": "completed",
        }


class FunctionCallItem(Lenient):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    # a JSON-encoded object, as OpenAI sends it; some clients send the object itself
    arguments: str | dict[str, Any] = ""

    def parsed_arguments(self, where: str) -> dict[str, Any]:
        return parse_arguments(self.arguments, f"{where}.arguments")

    def normalised(self) -> dict[str, Any]:
        args = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments, ensure_ascii=False)
        return {
            "type": "function_call",
            "id": self.id or new_id("fc"),
            "call_id": self.call_id,
            "name": self.name,
            "arguments": args,
            "status": "completed",
        }


class FunctionCallOutputItem(Lenient):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str | list[TextPart]

    def normalised(self) -> dict[str, Any]:
        return {
            "type": "function_call_output",
            "id": self.id or new_id("fco"),
            "call_id": self.call_id,
            "output": _text(self.output),
            "status": "completed",
        }


class ReasoningItem(Lenient):
    """Thinking from an earlier answer, sent back by clients that replay output: kept, never prompted."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[TextPart] = Field(default_factory=list)
    content: list[TextPart] | None = None

    def normalised(self) -> dict[str, Any]:
        return {
            "type": "reasoning",
            "id": self.id or new_id("rs"),
            "summary": [{"type": "summary_text", "text": p.value} for p in self.summary],
            "content": [{"type": "reasoning_text", "text": p.value} for p in self.content or []],
            "status": "completed",
        }


def _item_tag(value: Any) -> str:
    # an item without a type is a message ({"role": "user", "content": "..."}), as in OpenAI's EasyInputMessage
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_tag),
]


class ItemList(Lenient):
    items: list[InputItem]


def parse_items(raw: list[dict[str, Any]]) -> list[InputItem]:
    """Stored (already normalised) items read back as models."""
    return ItemList.model_validate({"items": raw}).items


def to_messages(items: list[InputItem], where: str = "input") -> list[Message]:
    """Items as canonical messages: calls join the assistant turn before them, outputs become tool turns."""
    out: list[Message] = []
    call_names: dict[str, str] = {}
    for i, item in enumerate(items):
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            out.append(Message(role=role, content=_text(item.content)))
        elif isinstance(item, FunctionCallItem):
            call = ToolCallRef(id=item.call_id, name=item.name, arguments=item.parsed_arguments(f"{where}[{i}]"))
            call_names[item.call_id] = item.name
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                out.append(Message(role="assistant", content="", tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            name = call_names.get(item.call_id)
            out.append(Message(role="tool", content=_text(item.output), tool_call_id=item.call_id, name=name))
    return out


# --- tools, formats, the body -----------------------------------------------------------------


class FunctionToolIn(Lenient):
    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def tool(self) -> Tool:
        params = self.parameters if self.parameters is not None else {"type": "object", "properties": {}}
        return Tool(name=self.name, description=self.description or "", parameters=params)

    def echoed(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }


class NamedFunctionChoice(Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("type 'json_schema' needs a 'schema'")
        return self

    def constraint(self) -> OutputConstraint | None:
        if self.type == "json_object":
            return OutputConstraint(kind="json")
        if self.type == "json_schema":
            return OutputConstraint(kind="json_schema", json_schema=self.schema_)
        return None

    def echoed(self) -> dict[str, Any]:
        if self.type != "json_schema":
            return {"type": self.type}
        return {
            "type": "json_schema",
            "name": self.name or "response",
            "description": self.description,
            "schema": self.schema_,
            "strict": self.strict,
        }


class TextConfig(Lenient):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(Lenient):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: str | None = None

    def think(self) -> bool | None:
        if self.effort is None:
            return None
        return self.effort not in ("none", "minimal")


class ResponsesRequest(Lenient):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[FunctionToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=256)
    reasoning: ReasoningConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)
    background: bool | None = None
    conversation: Any = None
    cache: CacheControls | None = None
    # the earlier turns, loaded from the store when previous_response_id names one (see the front's before)
    _history: list[InputItem] = PrivateAttr(default_factory=list)

    @field_validator("input", mode="before")
    @classmethod
    def _known_items(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ValueError(f"item {i} must be an object, got {type(item).__name__}")
                kind = item.get("type", "message")
                if kind not in ITEM_TYPES:
                    raise ValueError(
                        f"item {i}: type {kind!r} is not supported here; send {', '.join(map(repr, ITEM_TYPES))}"
                    )
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, tool in enumerate(value):
                kind = tool.get("type") if isinstance(tool, dict) else None
                if kind != "function":
                    raise ValueError(
                        f"tool {i}: type {kind!r} is not supported; this server runs function tools only "
                        "(the client executes them)"
                    )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(len(v) > 512 for v in value.values())):
            raise ValueError("at most 16 pairs, values up to 512 characters")
        return value

    @model_validator(mode="after")
    def _supported(self) -> ResponsesRequest:
        if self.background:
            raise ValueError("background responses are not offered: the answer is generated while you wait")
        if self.conversation is not None:
            raise ValueError("'conversation' is not offered; continue a conversation with previous_response_id")
        return self

    # --- what the rest of the front reads ---------------------------------------------------

    @property
    def input_items(self) -> list[InputItem]:
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)

    def normalised_input(self) -> list[dict[str, Any]]:
        return [item.normalised() for item in self.input_items]

    def set_history(self, items: list[InputItem]) -> None:
        self._history = items

    @property
    def format(self) -> TextFormat | None:
        return self.text.format if self.text is not None else None

    def _tool_choice(self) -> ToolChoice:
        if isinstance(self.tool_choice, NamedFunctionChoice):
            return ToolChoice(mode="function", name=self.tool_choice.name)
        return ToolChoice(mode=self.tool_choice or "auto")

    def to_canonical(self) -> GenerationRequest:
        messages = [Message(role="system", content=self.instructions)] if self.instructions else []
        messages += to_messages(self._history, "previous_response_id")
        new = to_messages(self.input_items)
        if not new:
            raise InvalidRequest("input: send a string or at least one message item", param="input")
        messages += new
        fmt = self.format
        return canonical_request(
            lambda: GenerationRequest(
                model=self.model,
                messages=messages,
                max_tokens=self.max_output_tokens,
                sampling=Sampling(temperature=self.temperature, top_p=self.top_p),
                constraint=fmt.constraint() if fmt is not None else None,
                tools=[t.tool() for t in self.tools or []],
                tool_choice=self._tool_choice(),
                # opt-in, as on the chat front: small models asked for "one or more" calls repeat the first
                parallel_tool_calls=self.parallel_tool_calls is True,
                stream=self.stream,
                think=self.reasoning.think() if self.reasoning is not None else None,
            ),
            format_field="text.format",
        )
