"""Retries, Retry-After, timeouts, cooldown, broken streams and disabled providers."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import time

import pytest
from pydantic import ValidationError

from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.common import FakeReply
from tests.fakes.openai_fake import OpenAIFake
from tests.providers.util import KEY_ENV, chat, collect, provider, text_of
from zoe_edge.canonical import ErrorEvent, Finish, TextDelta
from zoe_edge.errors import ZoeError
from zoe_edge.providers import AnthropicProvider, OpenAIProvider, ProviderConfig, ProviderError, make_provider
from zoe_edge.providers.base import parse_retry_after


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- retries before the first event -----------------------------------------------------------


async def test_500_then_200_is_retried_and_served(openai_fake: OpenAIFake) -> None:
    fake = openai_fake  # the fixture form of the fake
    fake.fail(1, 500)
    p = provider("openai", fake.url)
    events = await collect(p)
    await p.close()
    assert text_of(events) == "Hello from the fake."
    assert isinstance(events[-1], Finish)
    assert len(fake.requests) == 2
    assert fake.requests[0].body == fake.requests[1].body
    assert p.consecutive_failures == 0


async def test_429_retry_after_is_honoured() -> None:
    async with OpenAIFake() as fake:
        fake.fail(1, 429, retry_after="1")
        p = provider("openai", fake.url, backoff=0.01)
        start = time.monotonic()
        events = await collect(p)
        elapsed = time.monotonic() - start
        await p.close()
    assert isinstance(events[-1], Finish)
    assert len(fake.requests) == 2
    assert 0.9 <= elapsed < 3.0  # the backoff alone would have been 10 ms


async def test_retry_after_is_capped() -> None:
    async with OpenAIFake() as fake:
        fake.fail(1, 429, retry_after="120")
        p = provider("openai", fake.url, max_backoff=0.2)
        start = time.monotonic()
        await collect(p)
        elapsed = time.monotonic() - start
        await p.close()
    assert 0.15 <= elapsed < 3.0  # not the 120 s asked for


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"Retry-After": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=1_000_000) == pytest.approx(30.0)
    assert parse_retry_after({"Retry-After": date}, now=1_000_100) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


async def test_retries_exhausted_raise_retryable_error() -> None:
    async with OpenAIFake() as fake:
        fake.fail(5, 503, retry_after="0")
        p = provider("openai", fake.url, retries=2)
        with pytest.raises(ProviderError) as info:
            await collect(p)
        await p.close()
    assert len(fake.requests) == 3
    err = info.value
    assert isinstance(err, ZoeError)
    assert (err.status, err.code, err.retryable, err.upstream_status) == (503, "upstream_overloaded", True, 503)
    assert err.retry_after == 0.0
    assert p.consecutive_failures == 1


@pytest.mark.parametrize(
    ("status", "code", "client_status"),
    [(400, "upstream_rejected", 400), (401, "upstream_auth_failed", 502), (404, "upstream_not_found", 502)],
)
async def test_client_errors_are_not_retried(status: int, code: str, client_status: int) -> None:
    async with OpenAIFake() as fake:
        fake.fail(1, status, message="nope: details")
        p = provider("openai", fake.url, retries=3)
        with pytest.raises(ProviderError) as info:
            await collect(p)
        await p.close()
    assert len(fake.requests) == 1
    err = info.value
    assert (err.code, err.status, err.retryable, err.upstream_status) == (code, client_status, False, status)
    assert "nope: details" in err.message and p.name in err.message
    # a rejected request says nothing about the provider's health
    assert p.consecutive_failures == (0 if status == 400 else 1)


async def test_connection_refused_is_retryable_after_retries() -> None:
    p = provider("openai", f"http://127.0.0.1:{closed_port()}/v1", retries=2, backoff=0.05)
    start = time.monotonic()
    with pytest.raises(ProviderError) as info:
        await collect(p)
    elapsed = time.monotonic() - start
    await p.close()
    err = info.value
    assert (err.code, err.retryable, err.status, err.upstream_status) == ("upstream_unreachable", True, 502, None)
    assert elapsed >= 0.05 + 0.1  # two backoffs: 50 ms, then 100 ms
    assert p.consecutive_failures == 1


async def test_first_byte_timeout() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(delay=5.0))
        p = provider("openai", fake.url, timeout=0.3, retries=0)
        start = time.monotonic()
        with pytest.raises(ProviderError) as info:
            await collect(p)
        elapsed = time.monotonic() - start
        await p.close()
    assert (info.value.code, info.value.status, info.value.retryable) == ("upstream_timeout", 504, True)
    assert 0.25 <= elapsed < 3.0


async def test_stall_before_first_event_is_retried() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(stall_after=1))  # headers and the role chunk, then nothing
        p = provider("openai", fake.url, timeout=0.3)
        events = await collect(p)
        await p.close()
    assert text_of(events) == "Hello from the fake."
    assert len(fake.requests) == 2


# --- cooldown ---------------------------------------------------------------------------------


async def test_cooldown_after_repeated_failures_then_recovery() -> None:
    async with OpenAIFake() as fake:
        fake.fail(2, 500)
        p = provider("openai", fake.url, retries=0, cooldown_after=2, cooldown=0.5)
        for _ in range(2):
            assert p.cooling_down() is None
            with pytest.raises(ProviderError) as info:
                await collect(p)
            assert info.value.code == "upstream_error"
        left = p.cooling_down()
        assert left is not None and 0.3 < left <= 0.5
        # cooling down: refused at once, the upstream is not asked
        with pytest.raises(ProviderError) as info:
            await collect(p)
        assert (info.value.code, info.value.status, info.value.retryable) == ("cooling_down", 503, True)
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 0.5
        assert len(fake.requests) == 2
        await asyncio.sleep(0.55)
        assert p.cooling_down() is None
        events = await collect(p)
        assert isinstance(events[-1], Finish)
        assert len(fake.requests) == 3
        assert p.consecutive_failures == 0
        await p.close()


async def test_success_resets_the_failure_count() -> None:
    async with OpenAIFake() as fake:
        p = provider("openai", fake.url, retries=0, cooldown_after=2, cooldown=30)
        fake.fail(1, 500)
        with pytest.raises(ProviderError):
            await collect(p)
        assert p.consecutive_failures == 1
        await collect(p)
        assert p.consecutive_failures == 0
        fake.fail(1, 500)
        with pytest.raises(ProviderError):
            await collect(p)
        assert p.cooling_down() is None  # 1 failure, success, 1 failure: not two in a row
        await p.close()


# --- failures after the first event: an ErrorEvent, never an exception ------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_stream_cut_after_three_chunks(kind: str) -> None:
    fake_cls = OpenAIFake if kind == "openai" else AnthropicFake
    async with fake_cls() as fake:
        # OpenAI: role chunk + 2 text chunks; Anthropic: message_start, block_start, ping, then cut
        fake.reply(FakeReply(text="abcdefghijklmnop", cut_after=3 if kind == "openai" else 4))
        p = provider(kind, fake.url)
        events = await collect(p)
        await p.close()
    assert text_of(events) == ("abcdefgh" if kind == "openai" else "abcd")
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    last = events[-1]
    assert isinstance(last, ErrorEvent)
    assert last.code == "upstream_disconnected" and last.status == 502
    assert len(fake.requests) == 1  # never retried once output has been yielded: no splice
    assert p.consecutive_failures == 1


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_idle_stall_mid_stream_ends_with_error_event(kind: str) -> None:
    fake_cls = OpenAIFake if kind == "openai" else AnthropicFake
    async with fake_cls() as fake:
        fake.reply(FakeReply(text="abcdefghijklmnop", stall_after=4))
        p = provider(kind, fake.url, idle_timeout=0.3)
        start = time.monotonic()
        events = await collect(p)
        elapsed = time.monotonic() - start
        await p.close()
    assert text_of(events) != ""
    last = events[-1]
    assert isinstance(last, ErrorEvent)
    assert (last.code, last.status) == ("upstream_timeout", 504)
    assert 0.25 <= elapsed < 3.0
    assert len(fake.requests) == 1


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_malformed_chunk_ends_with_error_event(kind: str) -> None:
    fake_cls = OpenAIFake if kind == "openai" else AnthropicFake
    async with fake_cls() as fake:
        fake.reply(FakeReply(text="abcdefghijklmnop", malformed_after=4))
        p = provider(kind, fake.url)
        events = await collect(p)
        await p.close()
    assert text_of(events) in ("abcdefghijkl", "abcd")
    last = events[-1]
    assert isinstance(last, ErrorEvent)
    assert last.code == "upstream_malformed" and "not JSON" in last.message
    assert sum(isinstance(e, ErrorEvent) for e in events) == 1


async def test_abandoned_stream_releases_the_upstream() -> None:
    async with OpenAIFake() as fake:
        fake.reply(FakeReply(text="a" * 400, text_chunk=1, chunk_delay=0.01))
        p = provider("openai", fake.url)
        async with contextlib.aclosing(p.generate("m", chat())) as events:
            first = await anext(events)
        assert first == TextDelta("a")
        events_after = await collect(p)  # the provider still works; nothing counted as a failure
        await p.close()
    assert isinstance(events_after[-1], Finish)
    assert p.consecutive_failures == 0


# --- disabled providers and configuration -----------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("value", [None, "", "  "])
async def test_missing_key_disables_the_provider(kind: str, value: str | None) -> None:
    async with OpenAIFake() as fake:
        p = provider(kind, fake.url, key=value)
        assert p.disabled_reason() == f"{KEY_ENV} is not set"
        with pytest.raises(ProviderError) as info:
            await collect(p)
        await p.close()
    assert (info.value.code, info.value.retryable, info.value.status) == ("provider_disabled", False, 503)
    assert KEY_ENV in info.value.message
    assert fake.requests == []
    assert p.consecutive_failures == 0


def test_config_and_factory() -> None:
    cfg = ProviderConfig(type="anthropic", base_url="https://api.anthropic.com/", api_key_env="ANTHROPIC_API_KEY")
    assert cfg.base_url == "https://api.anthropic.com"
    assert (cfg.retries, cfg.cooldown_after, cfg.max_tokens_default) == (2, 3, 1024)
    p = make_provider("claude", cfg, env={"ANTHROPIC_API_KEY": "k"})
    assert isinstance(p, AnthropicProvider) and p.name == "claude" and p.disabled_reason() is None
    assert p.build_request("c", chat())[0] == "https://api.anthropic.com/v1/messages"
    o = make_provider("peer", ProviderConfig(type="openai", base_url="http://zoe.local:8080/v1"), env={})
    assert isinstance(o, OpenAIProvider) and o.disabled_reason() is None
    assert o.build_request("m", chat())[0] == "http://zoe.local:8080/v1/chat/completions"
    with pytest.raises(ValidationError):
        ProviderConfig(type="openai", base_url="http://x", api_key="inline")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ProviderConfig(type="gemini", base_url="http://x")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ProviderConfig(type="openai", base_url="api.openai.com")


async def test_cut_before_first_event_is_retried() -> None:
    async with AnthropicFake() as fake:
        fake.reply(FakeReply(text="lost", cut_after=2))  # message_start and block_start only
        p = provider("anthropic", fake.url)
        events = await collect(p)
        await p.close()
    assert text_of(events) == "Hello from the fake."
    assert len(fake.requests) == 2
    assert p.consecutive_failures == 0


async def test_after_a_cooldown_one_more_failure_cools_down_again() -> None:
    async with OpenAIFake() as fake:
        fake.fail(3, 500)
        p = provider("openai", fake.url, retries=0, cooldown_after=2, cooldown=0.2)
        for _ in range(2):
            with pytest.raises(ProviderError):
                await collect(p)
        assert p.cooling_down() is not None
        await asyncio.sleep(0.25)
        assert p.cooling_down() is None
        with pytest.raises(ProviderError) as info:
            await collect(p)  # half-open: the first try after a cooldown decides
        assert info.value.code == "upstream_error"
        assert p.cooling_down() is not None
        assert len(fake.requests) == 3
        state = p.state()
        assert state["name"] == p.name and state["type"] == "openai" and state["disabled"] is None
        assert state["cooling_down_s"] is not None and state["cooling_down_s"] > 0
        assert "test-key" not in repr(state)
        await p.close()
