"""The Responses front: ``POST /v1/responses`` over the generic serve loop, and the stored responses' endpoints.

A stored response belongs to the client key that created it (``None`` when the daemon has no
keys); for any other key it does not exist, and every lookup answers the same 404 as for an id
never seen, so ids cannot be probed across keys.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from zoe_edge.api.common import SETTINGS, context, parse_body
from zoe_edge.api.front import Answer, Front, serve
from zoe_edge.api.openai.render import error_response
from zoe_edge.api.responses.render import ResponsesAnswer
from zoe_edge.api.responses.requests import ResponsesRequest, parse_items
from zoe_edge.canonical import GenerationRequest
from zoe_edge.conversations import ResponseStore, StoredResponse
from zoe_edge.errors import InvalidRequest, ZoeError
from zoe_edge.routing.dispatch import Dispatched
from zoe_edge.service import RequestContext

STORE = web.AppKey("responses_store", ResponseStore)
STORE_FILE = "responses.sqlite3"


class ResponseNotFound(ZoeError):
    status = 404
    type = "invalid_request_error"
    code = "response_not_found"


def owner(ctx: RequestContext) -> str | None:
    return ctx.key.id if ctx.key is not None else None


def not_found(response_id: str, param: str | None = None) -> ResponseNotFound:
    return ResponseNotFound(f"Response with id '{response_id}' not found.", param=param)


class ResponsesFront(Front[ResponsesRequest]):
    traffic = "responses"

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def error_response(self, exc: ZoeError) -> web.Response:
        return error_response(exc)

    def parse(self, data: Any) -> ResponsesRequest:
        return parse_body(ResponsesRequest, data)

    async def before(
        self, request: web.Request, ctx: RequestContext, body: ResponsesRequest
    ) -> web.StreamResponse | None:
        previous = body.previous_response_id
        if previous is not None:
            chain = await self.store.chain(previous, owner(ctx))
            if chain is None:
                raise ResponseNotFound(
                    f"Previous response with id '{previous}' not found.", param="previous_response_id"
                )
            body.set_history(parse_items([item for rec in chain for item in rec.items]))
        return None

    def canonical(self, body: ResponsesRequest) -> GenerationRequest:
        return body.to_canonical()

    def answer(self, ctx: RequestContext, body: ResponsesRequest, dispatched: Dispatched) -> Answer:
        if not body.store:
            return ResponsesAnswer(body, dispatched.served_by.model)
        who, input_items, store = owner(ctx), body.normalised_input(), self.store

        def save(obj: dict[str, Any]) -> None:
            # queued, not awaited: the store's one thread runs it before any later lookup
            store.save(StoredResponse(obj["id"], who, time.time(), body.previous_response_id, input_items, obj))

        return ResponsesAnswer(body, dispatched.served_by.model, save)


async def create(request: web.Request) -> web.StreamResponse:
    return await serve(request, ResponsesFront(request.app[STORE]))


async def _stored(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    rec = await request.app[STORE].get(response_id, owner(context(request)))
    if rec is None:
        raise not_found(response_id)
    return rec


async def retrieve(request: web.Request) -> web.Response:
    return web.json_response((await _stored(request)).response)


async def delete(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if not await request.app[STORE].delete(response_id, owner(context(request))):
        raise not_found(response_id)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def cancel(request: web.Request) -> web.Response:
    """Only background responses can be cancelled, and this server makes none: a stored one is finished."""
    await _stored(request)
    raise InvalidRequest(
        "Only responses created with background=true can be cancelled; this response has already finished.",
        code="invalid_request",
    )


def _limit(raw: str | None) -> int:
    try:
        value = int(raw) if raw is not None else 20
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise InvalidRequest("limit must be an integer between 1 and 100", param="limit")
    return value


async def input_items(request: web.Request) -> web.Response:
    """The items this response's request sent (not the history it continued), newest first by default."""
    items = list((await _stored(request)).input_items)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    if order == "desc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = _limit(request.query.get("limit"))
    page = items[:limit]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def add_routes(app: web.Application, store: ResponseStore | None = None) -> None:
    """The endpoints, and the store (in the state directory unless one is given) closed with the app."""
    app[STORE] = store if store is not None else ResponseStore(app[SETTINGS].state_dir / STORE_FILE)
    app.cleanup_ctx.append(_store_lifetime)
    # any id text matches (aiohttp's default pattern stops at braces): an id never stored is our 404, not the router's
    one = "/v1/responses/{response_id:[^/]+}"
    app.router.add_post("/v1/responses", create)
    app.router.add_get(one, retrieve)
    app.router.add_delete(one, delete)
    app.router.add_post(one + "/cancel", cancel)
    app.router.add_get(one + "/input_items", input_items)


async def _store_lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[STORE].close()
