"""The OpenAI front: chat completions and completions over the generic serve loop, and the model list."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from zoe_edge.api.common import SETTINGS, parse_body, registry_of
from zoe_edge.api.front import Answer, Front, serve
from zoe_edge.api.openai.embeddings import embeddings
from zoe_edge.api.openai.render import OpenAIAnswer, error_response
from zoe_edge.api.openai.requests import ChatCompletionRequest, CompletionRequest
from zoe_edge.canonical import GenerationRequest
from zoe_edge.errors import ZoeError
from zoe_edge.registry import model_path
from zoe_edge.routing.dispatch import Dispatched
from zoe_edge.service import RequestContext


class ChatFront(Front[ChatCompletionRequest]):
    traffic = "openai-chat"

    def error_response(self, exc: ZoeError) -> web.Response:
        return error_response(exc)

    def parse(self, data: Any) -> ChatCompletionRequest:
        return parse_body(ChatCompletionRequest, data)

    def canonical(self, body: ChatCompletionRequest) -> GenerationRequest:
        return body.to_canonical()

    def answer(self, ctx: RequestContext, body: ChatCompletionRequest, dispatched: Dispatched) -> Answer:
        return OpenAIAnswer("chat", dispatched.served_by.model, body.legacy_functions, body.include_usage)


class CompletionFront(Front[CompletionRequest]):
    traffic = "openai-completions"

    def error_response(self, exc: ZoeError) -> web.Response:
        return error_response(exc)

    def parse(self, data: Any) -> CompletionRequest:
        return parse_body(CompletionRequest, data)

    def canonical(self, body: CompletionRequest) -> GenerationRequest:
        return body.to_canonical()

    def answer(self, ctx: RequestContext, body: CompletionRequest, dispatched: Dispatched) -> Answer:
        return OpenAIAnswer("completion", dispatched.served_by.model, include_usage=body.include_usage)


CHAT = ChatFront()
COMPLETION = CompletionFront()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await serve(request, CHAT)


async def completions(request: web.Request) -> web.StreamResponse:
    return await serve(request, COMPLETION)


async def list_models(request: web.Request) -> web.Response:
    registry = registry_of(request.app)
    settings = request.app[SETTINGS]
    registry_dir = settings.registry_path.resolve().parent
    created: dict[str, int] = {}
    for name, entry in registry.models.items():
        try:
            created[name] = int(model_path(entry, registry_dir, settings.state_dir).stat().st_mtime)
        except (OSError, ValueError):
            created[name] = 0
    data = [
        {"id": name, "object": "model", "created": created[name], "owned_by": "zoe-edge"} for name in registry.models
    ]
    data += [
        {"id": alias, "object": "model", "created": created[target], "owned_by": "zoe-edge", "parent": target}
        for alias, target in registry.aliases.items()
    ]
    # routes and the auto router are names a client can ask for too
    data += [{"id": name, "object": "model", "created": 0, "owned_by": "zoe-edge"} for name in registry.routes]
    if registry.auto is not None:
        data.append({"id": registry.auto.name, "object": "model", "created": 0, "owned_by": "zoe-edge"})
    return web.json_response({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
