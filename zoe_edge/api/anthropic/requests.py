"""Anthropic's Messages request bodies (``/v1/messages``, ``/v1/messages/count_tokens``) and their canonical
requests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from zoe_edge.api.common import Lenient, canonical_request, stop_limits
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import (
    TOOL_NAME,
    GenerationRequest,
    Message,
    Sampling,
    Tool,
    ToolCallRef,
    ToolChoice,
)
from zoe_edge.errors import InvalidRequest

# --- content blocks ---------------------------------------------------------------------------


class TextBlockIn(Lenient):
    type: Literal["text"]
    text: str


class ToolUseBlockIn(Lenient):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlockIn(Lenient):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlockIn] = ""
    is_error: bool = False

    def text(self) -> str:
        body = self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)
        # the canonical tool turn has no error flag: the model reads that the call failed from the text
        return f"Error: {body}" if self.is_error else body


class ThinkingBlockIn(Lenient):
    """Thinking a client passes back with its history (the SDK's ``to_param``); the prompt never shows it,
    as chat templates drop earlier turns' thinking."""

    type: Literal["thinking", "redacted_thinking"]


Block = Annotated[
    TextBlockIn | ToolUseBlockIn | ToolResultBlockIn | ThinkingBlockIn,
    Field(discriminator="type"),
]


class MessageIn(Lenient):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    def to_canonical(self, where: str) -> list[Message]:
        if isinstance(self.content, str):
            return [Message(role=self.role, content=self.content)]
        if self.role == "assistant":
            return [self._assistant(where)]
        return self._user(where)

    def _assistant(self, where: str) -> Message:
        text: list[str] = []
        calls: list[ToolCallRef] = []
        for i, block in enumerate(self.content):
            if isinstance(block, TextBlockIn):
                text.append(block.text)
            elif isinstance(block, ToolUseBlockIn):
                calls.append(ToolCallRef(id=block.id, name=block.name, arguments=block.input))
            elif isinstance(block, ToolResultBlockIn):
                raise InvalidRequest(
                    f"{where}.content[{i}]: tool_result blocks belong in a user message", param=f"{where}.content"
                )
        return Message(role="assistant", content="".join(text), tool_calls=calls or None)

    def _user(self, where: str) -> list[Message]:
        """Each ``tool_result`` becomes a tool turn; text around them becomes user turns, in order."""
        out: list[Message] = []
        text: list[str] = []
        for i, block in enumerate(self.content):
            if isinstance(block, TextBlockIn):
                text.append(block.text)
            elif isinstance(block, ToolResultBlockIn):
                if text:
                    out.append(Message(role="user", content="".join(text)))
                    text = []
                out.append(Message(role="tool", content=block.text(), tool_call_id=block.tool_use_id))
            elif isinstance(block, ToolUseBlockIn):
                raise InvalidRequest(
                    f"{where}.content[{i}]: tool_use blocks belong in an assistant message", param=f"{where}.content"
                )
        if text or not out:
            out.append(Message(role="user", content="".join(text)))
        return out


# --- tools, tool choice, thinking -------------------------------------------------------------


class ToolIn(Lenient):
    # client tools only: server tools (web search, bash, ...) name a type of their own and run at Anthropic
    type: Literal["custom"] | None = None
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    input_schema: dict[str, Any]

    def tool(self) -> Tool:
        return Tool(name=self.name, description=self.description or "", parameters=self.input_schema)


class ToolChoiceIn(Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1)
    disable_parallel_tool_use: bool | None = None

    def canonical(self) -> ToolChoice:
        if self.type == "tool":
            if not self.name:
                raise InvalidRequest("tool_choice: type 'tool' needs the tool's 'name'", param="tool_choice.name")
            return ToolChoice(mode="function", name=self.name)
        return ToolChoice(mode={"auto": "auto", "any": "required", "none": "none"}[self.type])


class ThinkingIn(Lenient):
    type: Literal["enabled", "disabled", "adaptive"]
    # a local template can switch thinking on or off but not budget it; accepted and not used
    budget_tokens: int | None = Field(default=None, ge=0)

    def think(self) -> bool | None:
        # adaptive: the model decides, which is what its template does when not told
        return {"enabled": True, "disabled": False}.get(self.type)


# --- the bodies -------------------------------------------------------------------------------


class CountTokensRequest(Lenient):
    """What ``count_tokens`` takes: everything that shapes the prompt, nothing that shapes the answer."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlockIn] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingIn | None = None

    # what the serve loop reads of every body
    stream: bool = False
    cache: CacheControls | None = None

    def system_text(self) -> str:
        if self.system is None:
            return ""
        return self.system if isinstance(self.system, str) else "\n\n".join(b.text for b in self.system)

    def messages_canonical(self) -> list[Message]:
        out: list[Message] = []
        if system := self.system_text():
            out.append(Message(role="system", content=system))
        for i, message in enumerate(self.messages):
            out.extend(message.to_canonical(f"messages[{i}]"))
        return out

    def parallel(self) -> bool:
        # opt-in, as on the OpenAI front: small models asked for "one or more" calls tend to repeat the first,
        # so several calls only when the client says disable_parallel_tool_use: false
        return self.tool_choice is not None and self.tool_choice.disable_parallel_tool_use is False

    def to_canonical(self) -> GenerationRequest:
        return self._canonical()

    def _canonical(self, **fields: Any) -> GenerationRequest:
        messages = self.messages_canonical()
        return canonical_request(
            lambda: GenerationRequest(
                model=self.model,
                messages=messages,
                tools=[t.tool() for t in self.tools or []],
                tool_choice=self.tool_choice.canonical() if self.tool_choice else ToolChoice(),
                parallel_tool_calls=self.parallel(),
                think=self.thinking.think() if self.thinking else None,
                stream=self.stream,
                **fields,
            )
        )


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    # Anthropic's range is 0..1, narrower than OpenAI's
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _stop_limits(cls, value: list[str] | None) -> list[str] | None:
        return stop_limits(value)

    def to_canonical(self) -> GenerationRequest:
        return self._canonical(
            max_tokens=self.max_tokens,
            stop=self.stop_sequences or [],
            sampling=Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k),
        )
