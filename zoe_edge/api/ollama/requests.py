"""Ollama's request bodies (chat, generate) and their canonical requests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, field_validator

from zoe_edge.api.common import Lenient, SamplingFields
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import GenerationRequest, Message, OutputConstraint, Tool, ToolCallRef
from zoe_edge.errors import InvalidRequest
from zoe_edge.registry import parse_duration


class Options(SamplingFields):
    num_ctx: int | None = Field(default=None, ge=0)
    num_predict: int | None = None
    stop: list[str] | None = None

    def max_tokens(self) -> int | None:
        # Ollama: -1 = until the model stops, -2 = fill the context; both mean "no cap of our own"
        return self.num_predict if self.num_predict is not None and self.num_predict > 0 else None


class FunctionIn(Lenient):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCallIn(Lenient):
    function: FunctionIn


class MessageIn(Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None
    images: list[Any] | None = None
    thinking: str | None = None

    @field_validator("images")
    @classmethod
    def _no_images(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("images are not supported by the local models")
        return value

    def to_canonical(self) -> Message:
        calls = [ToolCallRef(name=c.function.name, arguments=c.function.arguments) for c in self.tool_calls or []]
        return Message(
            role=self.role,
            content=self.content or "",
            name=self.tool_name if self.role == "tool" else None,
            tool_calls=calls if self.role == "assistant" and calls else None,
        )


class FunctionDef(Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class ModelAndKeepAlive(Lenient):
    """What every Ollama body that names a model has: the name, and how long to keep it loaded after."""

    model: str = Field(min_length=1, max_length=256)
    keep_alive: int | float | str | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _no_bool_keep_alive(cls, value: Any) -> Any:
        # pydantic would read true as 1 s; Ollama refuses a boolean, and so does openapi.yaml
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 300, '5m' or -1, not a boolean")
        return value

    def keep_alive_seconds(self) -> tuple[bool, float | None]:
        """(given, seconds); ``None`` seconds means keep loaded until told otherwise."""
        if self.keep_alive is None:
            return False, None
        try:
            return True, parse_duration(self.keep_alive)
        except ValueError:
            raise InvalidRequest(f"keep_alive: not a duration: {self.keep_alive!r}", param="keep_alive") from None


class _Common(ModelAndKeepAlive):
    stream: bool = True
    options: Options = Field(default_factory=Options)
    format: Literal["", "json"] | dict[str, Any] | None = None
    # a thinking model's block comes back as message.thinking / thinking; false asks for none (the
    # levels are gpt-oss's, and for other models mean true, as in Ollama)
    think: StrictBool | Literal["low", "medium", "high"] | None = None
    cache: CacheControls | None = None  # response cache controls, as in the OpenAI dialect

    @property
    def thinks(self) -> bool | None:
        return self.think if self.think is None or isinstance(self.think, bool) else True

    def constraint(self) -> OutputConstraint | None:
        if self.format == "json":
            return OutputConstraint(kind="json")
        if isinstance(self.format, dict):
            return OutputConstraint(kind="json_schema", json_schema=self.format)
        return None


class ChatRequest(_Common):
    messages: list[MessageIn] = Field(default_factory=list)
    tools: list[ToolDef] | None = None

    def to_canonical(self) -> GenerationRequest:
        tools = [
            Tool(
                name=t.function.name,
                description=t.function.description or "",
                parameters=t.function.parameters or {"type": "object", "properties": {}},
            )
            for t in self.tools or []
        ]
        return GenerationRequest(
            model=self.model,
            messages=[m.to_canonical() for m in self.messages],
            max_tokens=self.options.max_tokens(),
            stop=self.options.stop or [],
            sampling=self.options.sampling(),
            constraint=self.constraint(),
            tools=tools,
            stream=self.stream,
            n_ctx=self.options.num_ctx or None,
            think=self.thinks,
        )


class GenerateRequest(_Common):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    images: list[Any] | None = None

    def to_canonical(self) -> GenerationRequest:
        if self.images:
            raise InvalidRequest("images are not supported by the local models", param="images")
        common: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.options.max_tokens(),
            "stop": self.options.stop or [],
            "sampling": self.options.sampling(),
            "constraint": self.constraint(),
            "stream": self.stream,
            "n_ctx": self.options.num_ctx or None,
            "think": self.thinks,
        }
        if self.raw:
            return GenerationRequest(prompt=self.prompt, **common)
        messages = [Message(role="system", content=self.system)] if self.system else []
        messages.append(Message(role="user", content=self.prompt))
        return GenerationRequest(messages=messages, **common)
