"""Conversation state kept by the daemon: stored responses that ``previous_response_id`` continues (no HTTP here)."""

from zoe_edge.conversations.store import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BYTES,
    MAX_CHAIN,
    ResponseStore,
    StoredResponse,
)

__all__ = ["DEFAULT_MAX_AGE_S", "DEFAULT_MAX_BYTES", "MAX_CHAIN", "ResponseStore", "StoredResponse"]
