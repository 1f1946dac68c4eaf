"""``POST /v1/embeddings``: OpenAI's embeddings API over the local slot (see :meth:`Gateway.embed`)."""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from aiohttp import web
from pydantic import Field

from zoe_edge.api.common import Lenient, context, parse_body, read_json, request_headers
from zoe_edge.api.front import gateway
from zoe_edge.errors import InvalidRequest

# OpenAI's own limit on inputs per request
MAX_INPUTS = 2048


class EmbeddingsRequest(Lenient):
    model: str = Field(min_length=1, max_length=256)
    input: Any = None  # checked by texts(), for messages that say what is wrong
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        value = self.input
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise InvalidRequest("input must be a non-empty string or a non-empty list of strings", param="input")
        if len(value) > MAX_INPUTS:
            raise InvalidRequest(f"input has {len(value)} items; at most {MAX_INPUTS} per request", param="input")
        for i, item in enumerate(value):
            if isinstance(item, int | list) and not isinstance(item, bool):
                raise InvalidRequest(
                    "input as token ids is not supported: send the text (a string or a list of strings)",
                    param="input",
                    code="unsupported_input",
                )
            if not isinstance(item, str):
                raise InvalidRequest(f"input[{i}] must be a string, got {type(item).__name__}", param=f"input[{i}]")
            if not item:
                raise InvalidRequest(f"input[{i}] is empty; there is nothing to embed", param=f"input[{i}]")
        return value


def encode(vector: list[float], encoding: str) -> list[float] | str:
    """``base64``: little-endian float32 bytes, as the openai SDK decodes them."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def embeddings(request: web.Request) -> web.Response:
    ctx = context(request)
    request_headers(request, ctx, "openai-embeddings")
    body = parse_body(EmbeddingsRequest, await read_json(request))
    texts = body.texts()
    out = await gateway(request).embed(ctx, body.model, texts, body.dimensions)
    data = [
        {"object": "embedding", "index": i, "embedding": encode(v, body.encoding_format)}
        for i, v in enumerate(out.vectors)
    ]
    usage = {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens}
    return web.json_response(
        {"object": "list", "data": data, "model": out.model, "usage": usage}, headers=ctx.route_headers
    )
