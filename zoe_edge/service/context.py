"""What one request carries through the layers, typed: who asked, what it cost, where it went."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from zoe_edge.access.keys import ClientKey
from zoe_edge.canonical import Priority
from zoe_edge.routing.priority import DEFAULT, PriorityChoice, Traffic
from zoe_edge.usage.record import UsageRecord


@dataclass
class RequestContext:
    request_id: str
    started: float = field(default_factory=time.perf_counter)  # when the request arrived, for durations
    key: ClientKey | None = None  # the client key that authenticated the request, when keys are configured
    usage: UsageRecord | None = None  # the ledger row of a generation (failed ones included)
    cache: str | None = None  # hit | miss | bypass, once the response cache has looked
    # where the request was routed (x-zoe-route, x-zoe-served-by, ...): sent with the answer and with an error
    route_headers: dict[str, str] = field(default_factory=dict)
    served_by: str | None = None  # the target's label, for the access log
    error: str | None = None  # the message of the error the request ended with
    deadline: float | None = None  # X-Zoe-Deadline: the longest this client waits for the local model
    cache_control: str | None = None  # the request's Cache-Control header
    # X-Zoe-Priority as the client sent it (None: absent), and the front it came through: the gateway
    # decides the priority from these, the route and the key (zoe_edge.routing.priority)
    requested_priority: Priority | None = None
    traffic: Traffic = "other"
    priority: PriorityChoice = DEFAULT  # the decision, once the gateway made it

    def use_priority(self, choice: PriorityChoice) -> None:
        self.priority = choice
        if self.usage is not None:
            self.usage.priority = choice.priority.value
            self.usage.priority_reason = choice.reason

    def use_key(self, key: ClientKey) -> None:
        self.key = key
        if self.usage is not None:
            self.usage.key_id = key.id
