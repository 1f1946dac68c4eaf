"""The Anthropic front: ``/v1/messages`` over the generic serve loop, and ``/v1/messages/count_tokens``."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from zoe_edge.api.anthropic.render import AnthropicAnswer, error_response
from zoe_edge.api.anthropic.requests import CountTokensRequest, MessagesRequest
from zoe_edge.api.common import context, parse_body, read_json, request_headers
from zoe_edge.api.front import Answer, Front, gateway, serve
from zoe_edge.cache.config import CacheControls
from zoe_edge.canonical import ErrorEvent, GenerationRequest
from zoe_edge.errors import ZoeError
from zoe_edge.routing.dispatch import Dispatched
from zoe_edge.service import RequestContext, collect


class MessagesFront(Front[MessagesRequest]):
    traffic = "anthropic-messages"

    def error_response(self, exc: ZoeError) -> web.Response:
        return error_response(exc)

    def parse(self, data: Any) -> MessagesRequest:
        return parse_body(MessagesRequest, data)

    def canonical(self, body: MessagesRequest) -> GenerationRequest:
        return body.to_canonical()

    def answer(self, ctx: RequestContext, body: MessagesRequest, dispatched: Dispatched) -> Answer:
        return AnthropicAnswer(dispatched.served_by.model)


MESSAGES = MessagesFront()


async def messages(request: web.Request) -> web.StreamResponse:
    response = await serve(request, MESSAGES)
    if not response.prepared:
        # the header the SDK reads into ``_request_id``; a stream's headers are gone before this returns
        response.headers["request-id"] = context(request).request_id
    return response


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt's tokens as the target model sees them (its tokenizer and chat template, tools included).

    Nothing below the gateway offers a tokenize call, so this generates one token of the same canonical
    request and reads its ``prompt_tokens``: the count is the one a create reports, through the same name
    resolution, key rules and routing. The one-token answer is never stored in the response cache.
    """
    ctx = context(request)
    request_headers(request, ctx, "anthropic-count-tokens")
    body = parse_body(CountTokensRequest, await read_json(request))
    req = body.to_canonical().model_copy(update={"max_tokens": 1, "stream": False})
    dispatched = await gateway(request).generate(ctx, body.model, req, CacheControls(no_store=True))
    async with contextlib.aclosing(dispatched.events) as events:
        if isinstance(dispatched.first, ErrorEvent):
            raise dispatched.first.as_exception()
        whole = await collect(dispatched.first, events)
    headers = {**dispatched.headers(), "request-id": ctx.request_id}
    return web.json_response({"input_tokens": whole.finish.usage.prompt_tokens}, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
