"""The prefix-cache policy, its budget in the plan and the models.yaml size setting: pure functions."""

from __future__ import annotations

import pytest

from zoe_edge.registry import ModelEntry, parse_size
from zoe_edge.supervisor.device import MiB
from zoe_edge.supervisor.planner import plan_prefix_cache
from zoe_edge.worker.prefix import common_prefix, decide

SYS = list(range(1000, 1600))  # a 600-token system prompt
A = [*SYS, 1, 2, 3]
B = [7, 8, 9, 10]
A2 = [*SYS, 4, 5]


def test_common_prefix() -> None:
    assert common_prefix(A, A2) == 600
    assert common_prefix(A, B) == 0
    assert common_prefix([], A) == 0
    assert common_prefix(A, A) == len(A)


def test_continuing_the_same_prompt_costs_nothing() -> None:
    d = decide(A, len(A), A2, {}, 256)
    assert not d.save and d.restore is None and d.live_shared == 600


def test_unrelated_prompt_saves_the_long_live_prefix_first() -> None:
    d = decide([*A, 50, 51], len(A), B, {}, 256)
    assert d.save and d.restore is None
    assert "save" in d.reason


def test_short_live_prompt_is_not_saved() -> None:
    d = decide([*B, 1, 2, 3], len(B), A, {}, 256)
    assert not d.save


def test_long_generation_after_a_short_prompt_is_not_saved() -> None:
    # 600 tokens in the KV, but only 4 of them came from the prompt
    d = decide([*B, *range(600)], len(B), A, {}, 256)
    assert not d.save


def test_snapshot_with_longer_prefix_is_restored_and_short_live_is_not_saved() -> None:
    d = decide(B, len(B), A2, {3: A}, 256)
    assert d.restore == 3 and d.restore_shared == 600 and not d.save


def test_restore_saves_a_long_live_prompt_it_replaces() -> None:
    other = list(range(5000, 5400))
    d = decide(other, len(other), A2, {0: A}, 256)
    assert d.restore == 0 and d.save


def test_snapshot_below_min_tokens_or_min_gain_is_not_restored() -> None:
    assert decide(B, len(B), A2, {0: A}, 700).restore is None  # shares 600 < 700
    # the live KV already holds 590 of the 600 shared tokens: a restore gains too little
    live = SYS[:590]
    assert decide(live, len(live), A2, {0: A}, 256).restore is None


def test_live_prompt_already_in_a_snapshot_is_not_saved_again() -> None:
    d = decide([*A, 9], len(A), B, {0: A}, 256)
    assert not d.save


def test_prefix_budget_from_spare_memory() -> None:
    kv = 96 * MiB
    # 1/4 of 1 GiB spare = 256 MiB, below 4 x KV = 384 MiB
    assert plan_prefix_cache(True, 1024 * MiB, kv, None)[0] == 256 * MiB
    # plenty spare: capped at 4 x KV
    assert plan_prefix_cache(True, 16 * 1024 * MiB, kv, None)[0] == 384 * MiB
    # the models.yaml cap wins when it is smaller, and 0 turns it off
    size, why = plan_prefix_cache(True, 16 * 1024 * MiB, kv, 64 * MiB)
    assert size == 64 * MiB and "cap" in why
    assert plan_prefix_cache(True, 16 * 1024 * MiB, kv, 0) == (0, "prefix cache off (prefix_cache: 0 in models.yaml)")
    assert plan_prefix_cache(False, 16 * 1024 * MiB, kv, None)[0] == 0
    assert plan_prefix_cache(True, -5 * MiB, kv, None)[0] == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1024, 1024),
        ("256MB", 256_000_000),
        ("1GiB", 1024**3),
        ("64 mib", 64 * 1024**2),
        ("1.5GB", 1_500_000_000),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["lots", -1, True, "12 parsecs", [1]])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_model_entry_prefix_cache_setting() -> None:
    assert ModelEntry(file="x.gguf").prefix_cache is None
    assert ModelEntry(file="x.gguf", prefix_cache="256MB").prefix_cache == 256_000_000
    assert ModelEntry(file="x.gguf", prefix_cache=0).prefix_cache == 0


def test_plan_carries_the_prefix_budget() -> None:
    from tests.unit.test_planner import SMOLLM2, budget, plan

    # orin-nano-8gb: 4984 MiB available, the plan totals 484.3 MiB, so ~4500 MiB spare; a quarter of
    # that (~1125 MiB) is above 4 x the 4096-ctx KV (4 x 94,371,840 bytes), which therefore wins
    p = plan(SMOLLM2, budget("orin-nano-8gb"))
    assert p.prefix_cache_bytes == 4 * 94_371_840
    assert p.as_dict()["prefix_cache_mb"] == 360.0
    assert "4 x KV" in p.prefix_cache_reason
    capped = plan(SMOLLM2, budget("orin-nano-8gb"), prefix_cache_cap=32 * MiB)
    assert capped.prefix_cache_bytes == 32 * MiB
    # a model that does not fit keeps nothing
    assert plan(SMOLLM2, budget("orin-nano-8gb", reserve_mb=100_000)).prefix_cache_bytes == 0
