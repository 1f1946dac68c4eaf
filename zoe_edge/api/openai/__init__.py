"""The OpenAI wire format: request bodies (:mod:`.requests`), rendering (:mod:`.render`), endpoints (:mod:`.front`)."""

from zoe_edge.api.common import MAX_STOP
from zoe_edge.api.openai.front import CHAT, COMPLETION, add_routes
from zoe_edge.api.openai.render import error_body, error_response
from zoe_edge.api.openai.requests import ChatCompletionRequest, CompletionRequest

__all__ = [
    "CHAT",
    "COMPLETION",
    "MAX_STOP",
    "ChatCompletionRequest",
    "CompletionRequest",
    "add_routes",
    "error_body",
    "error_response",
]
