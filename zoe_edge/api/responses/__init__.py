"""OpenAI's Responses API: request bodies (:mod:`.requests`), rendering (:mod:`.render`), endpoints (:mod:`.front`)."""

from zoe_edge.api.responses.front import STORE, ResponseNotFound, ResponsesFront, add_routes
from zoe_edge.api.responses.render import ResponsesAnswer
from zoe_edge.api.responses.requests import ResponsesRequest

__all__ = ["STORE", "ResponseNotFound", "ResponsesAnswer", "ResponsesFront", "ResponsesRequest", "add_routes"]
