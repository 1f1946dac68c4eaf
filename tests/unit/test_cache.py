"""The response cache's pure parts and the memory LRU: keys, policy, bounds, TTL. No daemon."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from pydantic import ValidationError

from zoe_edge.cache.config import CacheControls, CacheSettings
from zoe_edge.cache.key import cache_key, target_views
from zoe_edge.cache.memory import MemoryCache
from zoe_edge.cache.policy import decide, header_directives, nondeterministic
from zoe_edge.cache.service import ResponseCache, decode, encode
from zoe_edge.canonical import (
    Finish,
    GenerationRequest,
    Message,
    Sampling,
    TextDelta,
    Timings,
    Tool,
    ToolCall,
    Usage,
)
from zoe_edge.errors import RegistryError
from zoe_edge.registry import Registry, parse_registry
from zoe_edge.routing.routes import plan_request


def registry(**extra: Any) -> Registry:
    data: dict[str, Any] = {
        "default": "small",
        "models": {
            "small": {"file": "small.gguf", "sampling": {"temperature": 0.0}},
            "warm": {"file": "warm.gguf", "sampling": {"temperature": 0.7}},
        },
        "aliases": {"chat": "small", "other-chat": "small"},
        "providers": {"openai": {"type": "openai", "base_url": "https://api.openai.com/v1"}},
        "routes": {
            "action": {"targets": ["small"], "params": {"sampling": {"temperature": 0.3}}},
            "always": {"targets": ["warm"], "cache": True},
            "never": {"targets": ["small"], "cache": False},
            "cloudy": {"targets": ["small", "openai:gpt-4o-mini"]},
        },
        "cache": {},
    }
    data.update(extra)
    return parse_registry(data)


REG = registry()


def chat(text: str = "Hi", model: str = "chat", **fields: Any) -> GenerationRequest:
    return GenerationRequest(model=model, messages=[Message(role="user", content=text)], **fields)


def key_of(name: str, req: GenerationRequest, reg: Registry = REG) -> str:
    effective, views = target_views(reg, plan_request(reg, name, req), req)
    return cache_key(effective, views)


def decision(
    name: str, req: GenerationRequest, controls: CacheControls | None = None, header: str | None = None
) -> Any:
    plan = plan_request(REG, name, req)
    _, views = target_views(REG, plan, req)
    mode = plan.defaults_from.cache if plan.defaults_from else "deterministic"
    return decide(mode, views, controls, header)


# --- key ----------------------------------------------------------------------------------------


def test_key_ignores_the_alias_and_stream_but_not_the_model() -> None:
    base = key_of("chat", chat())
    assert key_of("other-chat", chat(model="other-chat")) == base
    assert key_of("small", chat(model="small", stream=True)) == base
    assert key_of("warm", chat(model="warm")) != base
    assert len(base) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"text": "Hello"},
        {"max_tokens": 7},
        {"stop": ["\n"]},
        {"sampling": Sampling(temperature=0.0, top_k=3)},
        {"sampling": Sampling(seed=1)},
        {"tools": [Tool(name="HassTurnOn")]},
        {"constraint": {"kind": "json"}},
    ],
)
def test_every_output_changing_field_changes_the_key(change: dict[str, Any]) -> None:
    text = change.pop("text", "Hi")
    assert key_of("chat", chat(text, **change)) != key_of("chat", chat())


def test_model_defaults_are_part_of_the_key() -> None:
    """A client that leaves temperature open gets the registry's value; that value is in the key."""
    explicit = chat(sampling=Sampling(temperature=0.0))
    assert key_of("chat", explicit) == key_of("chat", chat())
    hotter = registry(models={"small": {"file": "small.gguf", "sampling": {"temperature": 0.5}}, "warm": {"file": "w"}})
    assert key_of("chat", chat(), hotter) != key_of("chat", chat())


def test_route_overrides_and_targets_are_part_of_the_key() -> None:
    assert key_of("action", chat(model="action")) != key_of("chat", chat())
    assert key_of("never", chat(model="never")) == key_of("chat", chat())  # same target, same request
    assert key_of("cloudy", chat(model="cloudy")) != key_of("chat", chat())


def test_prefix_is_kept() -> None:
    req = chat()
    effective, views = target_views(REG, plan_request(REG, "chat", req), req)
    assert cache_key(effective, views, "zoe:").startswith("zoe:")


# --- policy -------------------------------------------------------------------------------------


def test_deterministic_requests_are_cached_others_bypass() -> None:
    d = decision("chat", chat())
    assert (d.lookup, d.store, d.status) == (True, True, "miss")
    hot = decision("chat", chat(sampling=Sampling(temperature=0.8)))
    assert (hot.lookup, hot.store, hot.status) == (False, False, "bypass")
    assert "temperature 0.8" in hot.reason
    seeded = decision("chat", chat(sampling=Sampling(temperature=0.8, seed=7)))
    assert seeded.lookup and seeded.store
    warm = decision("warm", chat(model="warm"))  # the model's own default is 0.7
    assert not warm.lookup and "0.7" in warm.reason


def test_route_override() -> None:
    assert decision("always", chat(model="always")).store  # temperature 0.7, cached because the route says so
    never = decision("never", chat(model="never"))
    assert not never.lookup and not never.store and "route" in never.reason
    assert not decision("action", chat(model="action")).lookup  # the route's temperature 0.3


def test_cloud_target_without_temperature_is_not_deterministic() -> None:
    d = decision("cloudy", chat(model="cloudy"))
    assert not d.lookup and "openai:gpt-4o-mini" in d.reason and "default" in d.reason
    assert decision("cloudy", chat(model="cloudy", sampling=Sampling(temperature=0.0))).lookup


@pytest.mark.parametrize(
    ("controls", "header", "lookup", "store"),
    [
        ({"no-cache": True}, None, False, True),
        ({"no-store": True}, None, True, False),
        ({"no-cache": True, "no-store": True}, None, False, False),
        (None, "no-cache", False, True),
        (None, "No-Store", True, False),
        (None, "max-age=0, no-store, no-cache", False, False),
        (None, "max-age=60", True, True),
        ({"ttl": 5}, None, True, True),
    ],
)
def test_client_controls(controls: dict[str, Any] | None, header: str | None, lookup: bool, store: bool) -> None:
    parsed = CacheControls.model_validate(controls) if controls is not None else None
    d = decision("chat", chat(), parsed, header)
    assert (d.lookup, d.store) == (lookup, store), d.reason


def test_backend_problem_bypasses() -> None:
    req = chat()
    plan = plan_request(REG, "chat", req)
    _, views = target_views(REG, plan, req)
    d = decide("deterministic", views, None, None, "redis down")
    assert not d.lookup and not d.store and "redis down" in d.reason


def test_header_directives() -> None:
    assert header_directives(None) == frozenset()
    assert header_directives(" No-Cache , max-age=3") == {"no-cache", "max-age"}


def test_nondeterministic_names_the_target() -> None:
    req = chat(model="warm")
    _, views = target_views(REG, plan_request(REG, "warm", req), req)
    assert nondeterministic(views) is not None and "local:warm" in (nondeterministic(views) or "")


# --- controls and settings validation ----------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{"nocache": True}, {"no-cache": "maybe"}, {"ttl": 0}, {"ttl": -3}, {"ttl": 10**9}, {"ttl": "soon"}]
)
def test_bad_controls_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CacheControls.model_validate(bad)


def test_controls_accept_durations_and_underscores() -> None:
    assert CacheControls.model_validate({"ttl": "5m"}).ttl == 300
    assert CacheControls.model_validate({"no_store": True}).no_store


def test_settings() -> None:
    assert not parse_registry({"default": "m", "models": {"m": {"file": "m.gguf"}}}).cache.enabled
    on = parse_registry({"default": "m", "models": {"m": {"file": "m.gguf"}}, "cache": None}).cache
    assert on.backend == "memory" and on.ttl == 600 and on.max_item_bytes == 1024 * 1024
    with pytest.raises(RegistryError, match="url"):
        parse_registry({"default": "m", "models": {"m": {"file": "m.gguf"}}, "cache": {"backend": "redis"}})
    with pytest.raises(RegistryError, match=r"routes\.r\.cache"):
        parse_registry(
            {"default": "m", "models": {"m": {"file": "m.gguf"}}, "routes": {"r": {"targets": ["m"], "cache": "x"}}}
        )
    redis = CacheSettings(backend="redis", url="redis://user:s3cret@cachehost:6380/2", ttl="10m")  # type: ignore[arg-type]
    assert redis.ttl == 600
    assert redis.safe_url() == "redis://user:***@cachehost:6380/2"
    assert "s3cret" not in str(redis.safe_url())


# --- memory LRU ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_bounds_hold_under_10000_distinct_requests() -> None:
    """10,000 distinct requests through the service's own lookup/record path; the bounds are checked
    after every store. Small answers first (the entry bound binds), then large ones (the byte bound)."""
    reg = registry(cache={"max_entries": 200, "max_bytes": 64 * 1024, "max_item_bytes": 4096})
    service = ResponseCache.from_registry(reg)
    cache = service.backend
    assert isinstance(cache, MemoryCache)
    rng = random.Random(9)
    peak_entries = peak_bytes = 0

    async def answer() -> Any:
        yield Finish("stop", Usage(3, 1))

    async def run() -> None:
        nonlocal peak_entries, peak_bytes
        for i in range(10_000):
            req = chat(f"request {i} " + "x" * rng.randrange(0, 300))
            looked = await service.lookup(plan_request(reg, "chat", req), req, None, None)
            assert looked.status == "miss" and looked.store
            size = rng.randrange(1, 40) if i < 5000 else rng.randrange(1, 5000)
            async for _ in service.record(looked, "local:small", TextDelta("y" * size), answer()):
                pass
            assert len(cache) <= 200 and cache.bytes <= 64 * 1024
            peak_entries, peak_bytes = max(peak_entries, len(cache)), max(peak_bytes, cache.bytes)

    asyncio.run(run())
    # both bounds were reached (so they were what limited growth), and oversized answers were refused
    assert peak_entries == 200 and peak_bytes > 60 * 1024 and cache.too_large > 0
    assert cache.evictions + cache.too_large + len(cache) == 10_000  # every request accounted for
    assert service.counts["stored"] + service.counts["too_large"] == 10_000
    # the byte count is exact: it equals what the entries hold
    assert cache.bytes == sum(len(k) + len(v) for k, (v, _) in cache._items.items())


def test_memory_entry_bound_and_lru_order() -> None:
    cache = MemoryCache(max_entries=3, max_bytes=10_000, max_item_bytes=1000)
    for k in "abc":
        cache.put_now(k, b"v" + k.encode(), 60)
    assert cache.get_now("a") == b"va"  # a is now the most recently used
    cache.put_now("d", b"vd", 60)
    assert cache.get_now("b") is None and cache.get_now("a") == b"va" and len(cache) == 3
    cache.put_now("a", b"new", 60)  # replacing keeps one entry and recounts its bytes
    # "a"+"new", "c"+"vc", "d"+"vd"
    assert len(cache) == 3 and cache.get_now("a") == b"new" and cache.bytes == (1 + 3) + 2 * (1 + 2)


def test_memory_ttl_expiry() -> None:
    clock = Clock()
    cache = MemoryCache(10, 10_000, 1000, clock=clock)
    cache.put_now("k", b"v", ttl=5)
    clock.now += 4.9
    assert cache.get_now("k") == b"v"
    clock.now += 0.2
    assert cache.get_now("k") is None and len(cache) == 0 and cache.bytes == 0 and cache.expirations == 1


def test_memory_refuses_an_item_over_the_item_limit() -> None:
    cache = MemoryCache(10, 10_000, 100)
    assert not cache.put_now("k", b"x" * 200, 60)
    assert len(cache) == 0 and cache.too_large == 1


# --- payloads and the service ------------------------------------------------------------------


def test_payload_round_trip() -> None:
    events = [
        TextDelta("Hi"),
        ToolCall(0, "call_1", "HassTurnOn", {"name": "kitchen"}),
        Finish("tool_calls", Usage(10, 4), Timings(1.0, 2.0)),
    ]
    served, back = decode(encode("local:small", events))
    assert served == "local:small" and back == events
    with pytest.raises(ValueError):
        decode(encode("local:small", [TextDelta("cut off")]))


def test_service_hit_reports_cached_prompt_and_zero_timings() -> None:
    async def run() -> None:
        service = ResponseCache.from_registry(REG)
        req = chat()
        plan = plan_request(REG, "chat", req)
        first = await service.lookup(plan, req, None, None)
        assert first.status == "miss" and first.store

        async def answer() -> Any:
            yield TextDelta(" there")
            yield Finish("stop", Usage(12, 2), Timings(5.0, 6.0))

        seen = [e async for e in service.record(first, "local:small", TextDelta("Hello"), answer())]
        assert len(seen) == 2
        hit = await service.lookup(plan_request(REG, "other-chat", req), req, None, None)
        assert hit.status == "hit" and hit.served_by == "local:small"
        assert hit.events is not None and hit.events[:2] == [TextDelta("Hello"), TextDelta(" there")]
        assert hit.events[-1] == Finish("stop", Usage(12, 2, 12), Timings())
        assert service.counts["hit"] == 1 and service.counts["stored"] == 1

    asyncio.run(run())


def test_service_does_not_store_errors_or_cancelled_answers() -> None:
    async def run() -> None:
        service = ResponseCache.from_registry(REG)
        req = chat()
        plan = plan_request(REG, "chat", req)
        first = await service.lookup(plan, req, None, None)

        async def cancelled() -> Any:
            yield Finish("cancelled", Usage(1, 1))

        _ = [e async for e in service.record(first, "local:small", TextDelta("a"), cancelled())]
        assert (await service.lookup(plan, req, None, None)).status == "miss"
        assert service.counts["stored"] == 0

    asyncio.run(run())


def test_cache_off_is_a_bypass_without_a_key() -> None:
    async def run() -> None:
        reg = registry(cache={"backend": "off"})
        service = ResponseCache.from_registry(reg)
        looked = await service.lookup(plan_request(reg, "chat", chat()), chat(), None, None)
        assert looked.status == "bypass" and looked.key is None and service.status()["backend"] == "off"

    asyncio.run(run())


def test_asking_not_to_think_is_another_answer() -> None:
    """A think-false request must not replay an answer that included thinking (or the other way round)."""
    assert key_of("chat", chat(think=False)) != key_of("chat", chat())
    assert key_of("chat", chat(think=True)) != key_of("chat", chat(think=False))
