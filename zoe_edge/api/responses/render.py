"""Canonical events as Responses API objects and SSE events (``event:`` + ``data:``, numbered).

One :class:`ResponsesAnswer` renders one answer: whole (:meth:`whole`) or as the stream of
``response.*`` events the official SDK assembles. Either way the finished response object is
handed to ``save`` (when the request asked to store it) exactly as the client received it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from zoe_edge.api.front import Answer
from zoe_edge.api.responses.requests import ResponsesRequest, new_id
from zoe_edge.canonical import ErrorEvent, Finish, ReasoningDelta, TextDelta, ToolCall, Usage
from zoe_edge.service import Collected

Save = Callable[[dict[str, Any]], None]


def usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        # the worker counts the tokens of one answer, thinking included, and does not split them
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


def arguments(call: ToolCall) -> str:
    return json.dumps(call.arguments, ensure_ascii=False)


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [output_text(text)]}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def call_item(item_id: str, call: ToolCall, status: str, args: str | None = None) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        # the canonical call id is what the client sends back as function_call_output.call_id
        "call_id": call.id or new_id("call"),
        "name": call.name,
        "arguments": arguments(call) if args is None else args,
        "status": status,
    }


def echoed_fields(body: ResponsesRequest) -> dict[str, Any]:
    """The request's settings as every response object repeats them (fields the SDK's ``Response`` needs)."""
    choice: Any = body.tool_choice.model_dump() if body.tool_choice is not None and not isinstance(
        body.tool_choice, str
    ) else (body.tool_choice or "auto")
    fmt = body.format
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is True,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
        "store": body.store,
        "temperature": body.temperature,
        "text": {"format": fmt.echoed() if fmt is not None else {"type": "text"}},
        "tool_choice": choice,
        "tools": [t.echoed() for t in body.tools or []],
        "top_p": body.top_p,
        "truncation": "disabled",
        "user": body.user,
        "background": False,
    }


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def failure_code(event: ErrorEvent) -> str:
    # the SDK knows a fixed set of codes; ours map onto the two that fit
    return "rate_limit_exceeded" if event.status == 429 else "server_error"


class ResponsesAnswer(Answer):
    def __init__(self, body: ResponsesRequest, model: str, save: Save | None = None) -> None:
        self.body = body
        self.model = model
        self.save = save
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # the finished items, in output order
        self.open_kind: str | None = None  # "message" | "reasoning": the item deltas go to now
        self.open_id = ""
        self.open_text: list[str] = []

    # --- the response object ------------------------------------------------------------------

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        finish: Finish | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "usage": usage(finish.usage) if finish is not None else None,
            **echoed_fields(self.body),
        }

    def _finished(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.save is not None:
            self.save(obj)
        return obj

    @staticmethod
    def status(finish: Finish) -> str:
        return "incomplete" if finish.reason == "length" else "completed"

    def whole(self, answer: Collected) -> dict[str, Any]:
        status = self.status(answer.finish)
        item_status = "incomplete" if status == "incomplete" else "completed"
        output: list[dict[str, Any]] = []
        if answer.reasoning:
            output.append(reasoning_item(new_id("rs"), answer.reasoning, item_status))
        if answer.text.strip() or not answer.calls:
            output.append(message_item(new_id("msg"), answer.text, item_status))
        output += [call_item(new_id("fc"), call, "completed") for call in answer.calls]
        return self._finished(self.response(status, output, answer.finish))

    # --- the stream ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(kind, payload)

    def opening(self) -> list[bytes]:
        start = self.response("in_progress", [])
        return [self._event("response.created", response=start), self._event("response.in_progress", response=start)]

    def _open(self, kind: str) -> list[bytes]:
        if self.open_kind == kind:
            return []
        frames = self._close("completed")
        self.open_kind, self.open_id, self.open_text = kind, new_id("msg" if kind == "message" else "rs"), []
        index = len(self.output)
        if kind == "message":
            item = message_item(self.open_id, "", "in_progress")
            item["content"] = []
            part = output_text("")
        else:
            item = reasoning_item(self.open_id, "", "in_progress")
            item["content"] = []
            part = {"type": "reasoning_text", "text": ""}
        frames.append(self._event("response.output_item.added", output_index=index, item=item))
        frames.append(
            self._event("response.content_part.added", item_id=self.open_id, output_index=index, content_index=0,
                        part=part)
        )
        return frames

    def _close(self, status: str) -> list[bytes]:
        """The done events of the open item, which joins the output."""
        if self.open_kind is None:
            return []
        text, index = "".join(self.open_text), len(self.output)
        where: dict[str, Any] = {"item_id": self.open_id, "output_index": index, "content_index": 0}
        if self.open_kind == "message":
            item = message_item(self.open_id, text, status)
            frames = [
                self._event("response.output_text.done", **where, text=text, logprobs=[]),
                self._event("response.content_part.done", **where, part=output_text(text)),
            ]
        else:
            item = reasoning_item(self.open_id, text, status)
            frames = [
                self._event("response.reasoning_text.done", **where, text=text),
                self._event("response.content_part.done", **where, part={"type": "reasoning_text", "text": text}),
            ]
        frames.append(self._event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        self.open_kind = None
        return frames

    def reasoning(self, delta: ReasoningDelta) -> list[bytes]:
        frames = self._open("reasoning")
        self.open_text.append(delta.text)
        frames.append(
            self._event("response.reasoning_text.delta", item_id=self.open_id, output_index=len(self.output),
                        content_index=0, delta=delta.text)
        )
        return frames

    def text(self, delta: TextDelta) -> list[bytes]:
        frames = self._open("message")
        self.open_text.append(delta.text)
        frames.append(
            self._event("response.output_text.delta", item_id=self.open_id, output_index=len(self.output),
                        content_index=0, delta=delta.text, logprobs=[])
        )
        return frames

    def call(self, call: ToolCall) -> list[bytes]:
        frames = self._close("completed")
        index, item_id, args = len(self.output), new_id("fc"), arguments(call)
        added = call_item(item_id, call, "in_progress", args="")
        done = {**added, "arguments": args, "status": "completed"}
        # each call whole in one delta, as on the chat front: clients need not stitch fragments
        frames += [
            self._event("response.output_item.added", output_index=index, item=added),
            self._event("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=args),
            self._event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                        name=call.name, arguments=args),
            self._event("response.output_item.done", output_index=index, item=done),
        ]
        self.output.append(done)
        return frames

    def finish(self, finish: Finish) -> list[bytes]:
        status = self.status(finish)
        frames = self._close("incomplete" if status == "incomplete" else "completed")
        if not self.output:
            # an empty answer is still a message, so output_text reads "" rather than failing
            frames += self._open("message") + self._close("completed")
        obj = self.response(status, self.output, finish)
        if finish.reason != "cancelled":
            self._finished(obj)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return [*frames, self._event(kind, response=obj)]

    def error(self, event: ErrorEvent) -> list[bytes]:
        frames = self._close("incomplete")
        obj = self.response("failed", self.output, error={"code": failure_code(event), "message": event.message})
        self._finished(obj)
        return [*frames, self._event("response.failed", response=obj)]
