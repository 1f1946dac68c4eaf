"""A canonical event stream gathered into one whole answer, for fronts that do not stream."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from zoe_edge.canonical import ErrorEvent, Event, Finish, ReasoningDelta, TextDelta, ToolCall
from zoe_edge.errors import ZoeError


@dataclass
class Collected:
    text: str
    calls: list[ToolCall]
    finish: Finish
    reasoning: str = ""  # the model's thinking, apart from its answer


async def collect(first: Event | None, events: AsyncGenerator[Event, None]) -> Collected:
    """The whole answer; an error event becomes the exception it stands for."""
    parts: list[str] = []
    thought: list[str] = []
    calls: list[ToolCall] = []
    event = first
    while event is not None:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, ReasoningDelta):
            thought.append(event.text)
        elif isinstance(event, ToolCall):
            calls.append(event)
        elif isinstance(event, ErrorEvent):
            raise event.as_exception()
        elif isinstance(event, Finish):
            return Collected("".join(parts), calls, event, "".join(thought))
        event = await anext(events, None)
    raise ZoeError("the generation ended without a result")
