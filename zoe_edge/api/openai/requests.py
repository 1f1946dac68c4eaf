"""OpenAI's request bodies (chat completions, completions) and their canonical requests."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from zoe_edge.api.common import Lenient, SamplingFields, canonical_request, parse_arguments, stop_limits
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import (
    TOOL_NAME,
    GenerationRequest,
    Message,
    OutputConstraint,
    Tool,
    ToolCallRef,
    ToolChoice,
)

log = logging.getLogger("zoe_edge.api")


# --- request models ---------------------------------------------------------------------------


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class FunctionCallIn(Lenient):
    name: str = Field(min_length=1)
    # OpenAI sends a JSON string; some clients send the object itself
    arguments: str | dict[str, Any] = ""

    def parsed_arguments(self, where: str) -> dict[str, Any]:
        return parse_arguments(self.arguments, where)


class ToolCallIn(Lenient):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCallIn | None = None  # legacy form of one tool call

    def to_canonical(self, where: str) -> Message:
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        calls = [
            ToolCallRef(
                id=c.id, name=c.function.name, arguments=c.function.parsed_arguments(f"{where}.tool_calls[{i}]")
            )
            for i, c in enumerate(self.tool_calls or [])
        ]
        if self.function_call is not None:
            calls.append(
                ToolCallRef(
                    name=self.function_call.name,
                    arguments=self.function_call.parsed_arguments(f"{where}.function_call"),
                )
            )
        return Message(
            role=role,
            content=self.text(),
            name=self.name,
            tool_calls=calls if role == "assistant" and calls else None,
            tool_call_id=self.tool_call_id if role == "tool" else None,
        )

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDef(Lenient):
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None

    def tool(self) -> Tool:
        params = self.parameters if self.parameters is not None else {"type": "object", "properties": {}}
        return Tool(name=self.name, description=self.description or "", parameters=params)


class ToolDef(Lenient):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(Lenient):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with a 'schema'")
        return self

    def constraint(self) -> OutputConstraint | None:
        if self.type == "json_object":
            return OutputConstraint(kind="json")
        if self.type == "json_schema":
            assert self.json_schema is not None
            return OutputConstraint(kind="json_schema", json_schema=self.json_schema.schema_)
        return None


class StreamOptions(Lenient):
    include_usage: bool = False


class _CommonParams(SamplingFields):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # int64 or uint64, as OpenAI accepts
    n: int = Field(default=1, ge=1, le=1, description="one choice per request: the model decodes one sequence")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    # top_k, min_p, repeat_penalty: llama.cpp-server extensions OpenAI clients pass through extra_body
    # LiteLLM-style response cache controls: {"no-cache": true, "no-store": true, "ttl": 60}
    cache: CacheControls | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value: Any) -> Any:
        # OpenAI accepts one string or a list; normalise before the type check
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: list[str] | None) -> list[str] | None:
        return stop_limits(value)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_CommonParams):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = Field(default=None, description="legacy form of tools")
    function_call: Literal["auto", "none"] | NamedFunction | None = None
    # o-series and reasoning models: "none" / "minimal" ask for no thinking; how much beyond that is
    # the model's own (a local model has no budget knob), so the other levels only allow it
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None

    @property
    def think(self) -> bool | None:
        if self.reasoning_effort is None:
            return None
        return self.reasoning_effort not in ("none", "minimal")

    @model_validator(mode="after")
    def _one_tool_style(self) -> ChatCompletionRequest:
        if self.tools and self.functions:
            raise ValueError("send either 'tools' or the legacy 'functions', not both")
        return self

    @property
    def legacy_functions(self) -> bool:
        """The client used ``functions``; it expects ``message.function_call`` back."""
        return bool(self.functions)

    def _tools(self) -> tuple[list[Tool], ToolChoice, bool]:
        if self.legacy_functions:
            assert self.functions is not None
            choice: Any = self.function_call
            tools = [f.tool() for f in self.functions]
            parallel = False  # function_call carries one call
        else:
            choice = self.tool_choice
            tools = [t.function.tool() for t in self.tools or []]
            # opt-in, as in llama.cpp's server: small models asked for "one or more" calls tend to
            # repeat the first one; a client that wants several says so
            parallel = self.parallel_tool_calls is True
        if isinstance(choice, NamedToolChoice | NamedFunction):
            name = choice.function.name if isinstance(choice, NamedToolChoice) else choice.name
            return tools, ToolChoice(mode="function", name=name), parallel
        return tools, ToolChoice(mode=choice or "auto"), parallel

    def to_canonical(self) -> GenerationRequest:
        messages = [m.to_canonical(f"messages[{i}]") for i, m in enumerate(self.messages)]
        tools, choice, parallel = self._tools()
        return canonical_request(
            lambda: GenerationRequest(
                model=self.model,
                messages=messages,
                max_tokens=self.max_completion_tokens or self.max_tokens,
                stop=self.stop or [],
                sampling=self.sampling(),
                constraint=self.response_format.constraint() if self.response_format else None,
                tools=tools,
                tool_choice=choice,
                parallel_tool_calls=parallel,
                stream=self.stream,
                think=self.think,
            )
        )


class CompletionRequest(_CommonParams):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    echo: Literal[False] = False
    suffix: None = None
    logprobs: None = None
    best_of: int = Field(default=1, ge=1, le=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send exactly one prompt per request")
        return value

    def to_canonical(self) -> GenerationRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GenerationRequest(
            model=self.model,
            prompt=prompt,
            max_tokens=self.max_tokens,
            stop=self.stop or [],
            sampling=self.sampling(),
            stream=self.stream,
        )
