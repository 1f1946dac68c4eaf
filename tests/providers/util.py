"""Helpers for provider tests: build providers against the fakes and drain their streams."""

from __future__ import annotations

import contextlib
from typing import Any

from zoe_edge.canonical import Event, Finish, GenerationRequest, Message, TextDelta, ToolCall
from zoe_edge.providers import Provider, ProviderConfig, make_provider

KEY_ENV = "ZOE_TEST_PROVIDER_KEY"


def provider(kind: str, base_url: str, *, key: str | None = "test-key", **settings: Any) -> Provider:
    """A provider with fast test timings; ``settings`` override ProviderConfig fields."""
    fields: dict[str, Any] = {
        "type": kind,
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "timeout": 5.0,
        "idle_timeout": 5.0,
        "retries": 2,
        "backoff": 0.01,
        "cooldown_after": 3,
        "cooldown": 30.0,
    }
    fields.update(settings)
    env = {KEY_ENV: key} if key is not None else {}
    return make_provider(f"test-{kind}", ProviderConfig.model_validate(fields), env=env)


def chat(text: str = "hi", **fields: Any) -> GenerationRequest:
    return GenerationRequest(model="alias", messages=[Message(role="user", content=text)], **fields)


async def collect(p: Provider, req: GenerationRequest | None = None, model: str = "up-model") -> list[Event]:
    """Every event of one generation (the provider's own exceptions propagate)."""
    async with contextlib.aclosing(p.generate(model, req or chat())) as events:
        return [e async for e in events]


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def calls_of(events: list[Event]) -> list[ToolCall]:
    return [e for e in events if isinstance(e, ToolCall)]


def finish_of(events: list[Event]) -> Finish:
    last = events[-1]
    assert isinstance(last, Finish), f"stream did not end with Finish: {events!r}"
    return last
