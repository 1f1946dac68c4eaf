"""Ollama's ``POST /api/embed`` and the legacy ``POST /api/embeddings`` over the local slot.

An empty input loads the model and embeds nothing, as Ollama does; ``keep_alive`` sets how long it
stays loaded afterwards, as for ``/api/chat``.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from pydantic import Field

from zoe_edge.api.common import SUPERVISOR, context, parse_body, read_json, request_headers
from zoe_edge.api.front import gateway
from zoe_edge.api.ollama import listing
from zoe_edge.api.ollama.requests import ModelAndKeepAlive
from zoe_edge.errors import InvalidRequest
from zoe_edge.service import RequestContext
from zoe_edge.service.gateway import Embedded

MAX_INPUTS = 2048


class _Common(ModelAndKeepAlive):
    options: dict[str, Any] | None = None  # num_ctx and sampling knobs: nothing an embedding uses


class EmbedRequest(_Common):
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)


class EmbeddingsRequest(_Common):
    prompt: str = ""


async def _embed(
    request: web.Request, body: _Common, texts: list[str], dimensions: int | None, truncate: bool
) -> tuple[RequestContext, Embedded | None]:
    """The vectors, or ``None`` when there was nothing to embed and the model was only loaded."""
    ctx = context(request)
    request_headers(request, ctx, "ollama-embed")
    given, seconds = body.keep_alive_seconds()  # a bad keep_alive is a 400 before anything loads
    service = gateway(request)
    # the supervisor's registry is the one in force (a reload hands it the new one)
    with listing.known_names(request.app[SUPERVISOR].registry, body.model):
        if not texts:
            model = await service.load(ctx, body.model, require_local=True)
            out = None
        else:
            out = await service.embed(ctx, body.model, texts, dimensions, truncate=truncate)
            model = out.model
    if given and model is not None:
        service.keep_alive(model, seconds)
    return ctx, out


async def embed(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = parse_body(EmbedRequest, await read_json(request))
    texts = [body.input] if isinstance(body.input, str) else body.input
    if texts == [""]:
        texts = []  # loads the model, as Ollama's does
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"input has {len(texts)} items; at most {MAX_INPUTS} per request", param="input")
    if any(not t for t in texts):
        raise InvalidRequest("input: an empty string has nothing to embed", param="input")
    ctx, out = await _embed(request, body, texts, body.dimensions, body.truncate)
    return web.json_response(
        {
            "model": body.model,
            "embeddings": out.vectors if out else [],
            "total_duration": int((time.perf_counter() - started) * 1e9),
            "load_duration": int((out.load_ms if out else 0.0) * 1e6),
            "prompt_eval_count": out.prompt_tokens if out else 0,
        },
        headers=ctx.route_headers,
    )


async def embeddings(request: web.Request) -> web.Response:
    """The legacy endpoint: one prompt, one vector; long prompts are cut rather than refused."""
    body = parse_body(EmbeddingsRequest, await read_json(request))
    ctx, out = await _embed(request, body, [body.prompt] if body.prompt else [], None, True)
    return web.json_response({"embedding": out.vectors[0] if out else []}, headers=ctx.route_headers)
