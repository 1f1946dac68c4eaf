"""Which priority a request gets, and why: pure functions over what the request and the config say.

Sources, most specific first: the client's ``X-Zoe-Priority`` header, the route's ``priority:``,
the API key's ``priority:``, then a default read from the traffic itself. The route beats the key
on purpose: Home Assistant uses one key for its conversation agent and its AI Task entity, and
tells them apart only by the model name (route) each subentry names.

The supervisor's queue serves lower :attr:`Priority.rank` first; the choice and its reason travel
to the client in ``x-zoe-priority`` and to the usage ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from zoe_edge.canonical import GenerationRequest, Priority

# which front a request came in through, as far as its default priority cares
Traffic = Literal[
    "ollama-chat",
    "ollama-generate",
    "ollama-embed",
    "openai-chat",
    "openai-completions",
    "openai-embeddings",
    "responses",
    "anthropic-messages",
    "anthropic-count-tokens",
    "other",  # the bench, or a caller that did not say
]

HEADER = "X-Zoe-Priority"
ALLOWED = tuple(p.value for p in Priority)

# Home Assistant's fixed system prompt for AI Task entities: homeassistant/components/ai_task/const.py,
# DEFAULT_SYSTEM_PROMPT, passed as user_llm_prompt by ai_task/entity.py; ChatLog.async_provide_llm_data
# (conversation/chat_log.py) puts it first in the system message, before the API prompt and the date.
# Kept as data: nothing here imports Home Assistant.
HA_AI_TASK_PROMPT = "You are a Home Assistant expert and help users with their tasks."


@dataclass(frozen=True)
class PriorityChoice:
    priority: Priority
    reason: str  # human-readable: which source decided


DEFAULT = PriorityChoice(Priority.NORMAL, "default")


def parse_priority(raw: str | None) -> Priority | None:
    """A header value as a :class:`Priority`; ``None`` when absent. Raises ``ValueError`` naming the allowed
    values. Exactly as the OpenAPI description states them, lower case: a value it calls invalid is refused."""
    if raw is None:
        return None
    try:
        return Priority(raw.strip())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(ALLOWED)}, got {raw!r}") from None


def is_ha_ai_task(req: GenerationRequest) -> bool:
    """Whether the request's system message opens with Home Assistant's AI Task prompt."""
    for message in req.messages or ():
        if message.role == "system":
            return message.content.lstrip().startswith(HA_AI_TASK_PROMPT)
    return False


def traffic_priority(req: GenerationRequest, traffic: Traffic) -> PriorityChoice:
    """The default when no header, route or key says: Ollama's ``/api/chat`` is Home Assistant's built-in
    conversation integration, the voice path, so it goes first, except an AI Task (an automation that
    nobody is waiting on); every other front is ``normal``."""
    if traffic == "ollama-chat":
        if is_ha_ai_task(req):
            return PriorityChoice(Priority.BACKGROUND, "Home Assistant AI Task prompt")
        return PriorityChoice(Priority.INTERACTIVE, "Ollama chat: voice default")
    return PriorityChoice(Priority.NORMAL, f"{traffic}: default")


def choose_priority(
    header: Priority | None,
    route_priority: tuple[str, Priority] | None,
    key_priority: tuple[str, Priority] | None,
    traffic: PriorityChoice,
) -> PriorityChoice:
    """The most specific source that says: header, then route, then key, then the traffic default.

    ``route_priority`` and ``key_priority`` are ``(name, priority)`` so the reason can name them.
    """
    if header is not None:
        return PriorityChoice(header, f"{HEADER} header")
    if route_priority is not None:
        name, priority = route_priority
        return PriorityChoice(priority, f"route {name!r}")
    if key_priority is not None:
        name, priority = key_priority
        return PriorityChoice(priority, f"key {name!r}")
    return traffic
