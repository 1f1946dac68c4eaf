"""The OpenAI provider against a real zoe-edge daemon (SmolLM2) as a keyless OpenAI-compatible upstream."""

from __future__ import annotations

import pytest

from tests.conftest import Daemon
from tests.providers.util import chat, collect, finish_of, text_of
from zoe_edge.canonical import GenerationRequest
from zoe_edge.providers import ProviderConfig, ProviderError, make_provider

pytestmark = pytest.mark.model


def peer(daemon: Daemon, **settings: object) -> ProviderConfig:
    return ProviderConfig.model_validate(
        {"type": "openai", "base_url": daemon.v1, "sampling_extensions": True, **settings}
    )


async def test_peer_text_stream_and_usage(daemon: Daemon) -> None:
    p = make_provider("peer", peer(daemon), env={})
    events = await collect(p, chat("Say hello.", max_tokens=6), model="smollm2-135m")
    await p.close()
    assert text_of(events) != ""
    finish = finish_of(events)
    assert finish.reason == "length"
    assert finish.usage.completion_tokens == 6 and finish.usage.prompt_tokens > 5


async def test_peer_unknown_model_is_not_retried(daemon: Daemon) -> None:
    p = make_provider("peer", peer(daemon), env={})
    with pytest.raises(ProviderError) as info:
        await collect(p, GenerationRequest(model="a", prompt="x"), model="no-such-model")
    await p.close()
    assert (info.value.code, info.value.upstream_status, info.value.retryable) == ("upstream_not_found", 404, False)
