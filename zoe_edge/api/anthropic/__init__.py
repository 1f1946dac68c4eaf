"""The Anthropic Messages wire format: request bodies (:mod:`.requests`), rendering (:mod:`.render`),
endpoints (:mod:`.front`)."""

from zoe_edge.api.anthropic.front import MESSAGES, add_routes
from zoe_edge.api.anthropic.render import error_body, error_response, error_type
from zoe_edge.api.anthropic.requests import CountTokensRequest, MessagesRequest

__all__ = [
    "MESSAGES",
    "CountTokensRequest",
    "MessagesRequest",
    "add_routes",
    "error_body",
    "error_response",
    "error_type",
]
