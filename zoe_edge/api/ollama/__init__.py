"""The Ollama wire format: request bodies (:mod:`.requests`), generation (:mod:`.front`), listings (:mod:`.listing`)."""

from zoe_edge.api.ollama.front import CHAT, GENERATE, add_routes, error_response
from zoe_edge.api.ollama.requests import ChatRequest, GenerateRequest, Options

__all__ = ["CHAT", "GENERATE", "ChatRequest", "GenerateRequest", "Options", "add_routes", "error_response"]
