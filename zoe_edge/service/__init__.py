"""The application under every front: one gateway that names, checks, routes, caches and records.

Nothing here knows HTTP. A front (``zoe_edge.api``) parses its wire format into the canonical
request, hands it to :class:`Gateway` with the request's :class:`RequestContext`, and renders the
canonical events that come back; the bench calls the same gateway.
"""

from zoe_edge.service.answer import Collected, collect
from zoe_edge.service.context import RequestContext
from zoe_edge.service.gateway import Gateway, Service

__all__ = ["Collected", "Gateway", "RequestContext", "Service", "collect"]
