"""The stored-responses store on its own: per-owner visibility, chains, persistence, and its bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zoe_edge.conversations import ResponseStore, StoredResponse


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def rec(
    response_id: str, created_at: float, owner: str | None = None, previous: str | None = None, pad: int = 0
) -> StoredResponse:
    response: dict[str, Any] = {"id": response_id, "output": [{"type": "message", "text": "x" * pad}]}
    return StoredResponse(response_id, owner, created_at, previous, [{"type": "message", "id": "in"}], response)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = ResponseStore(tmp_path / "responses.sqlite3")
    yield s
    await s.close()


async def test_a_response_is_found_only_by_its_owner(store: ResponseStore) -> None:
    now = store.clock()
    await store.put(rec("resp_a", now, owner="ha"))
    await store.put(rec("resp_n", now, owner=None))
    found = await store.get("resp_a", "ha")
    assert found is not None and found.response["id"] == "resp_a"
    assert found.items == [{"type": "message", "id": "in"}, {"type": "message", "text": ""}]
    assert await store.get("resp_a", "other") is None
    assert await store.get("resp_a", None) is None
    assert await store.get("resp_n", "ha") is None
    assert await store.get("resp_n", None) is not None
    assert not await store.delete("resp_a", "other")
    assert await store.get("resp_a", "ha") is not None
    assert await store.delete("resp_a", "ha")
    assert await store.get("resp_a", "ha") is None


async def test_save_without_waiting_is_seen_by_the_next_lookup(store: ResponseStore) -> None:
    store.save(rec("resp_q", store.clock()))
    assert await store.get("resp_q", None) is not None


async def test_chain_is_oldest_first_and_ends_at_a_missing_link(store: ResponseStore) -> None:
    now = store.clock()
    await store.put(rec("r1", now))
    await store.put(rec("r2", now + 1, previous="r1"))
    await store.put(rec("r3", now + 2, previous="r2"))
    chain = await store.chain("r3", None)
    assert chain is not None and [r.id for r in chain] == ["r1", "r2", "r3"]
    assert await store.chain("r3", "someone-else") is None
    assert await store.chain("nope", None) is None
    await store.delete("r2", None)
    chain = await store.chain("r3", None)
    assert chain is not None and [r.id for r in chain] == ["r3"]


async def test_responses_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "responses.sqlite3"
    first = ResponseStore(path)
    first.save(rec("resp_keep", first.clock(), owner="ha"))
    await first.close()
    second = ResponseStore(path)
    try:
        found = await second.get("resp_keep", "ha")
        assert found is not None and found.owner == "ha"
    finally:
        await second.close()


async def test_no_file_until_first_use(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    s = ResponseStore(path)
    await s.close()
    assert not path.exists()


async def test_old_responses_are_pruned_and_never_returned(tmp_path: Path) -> None:
    clock = Clock()
    s = ResponseStore(tmp_path / "r.sqlite3", max_age_s=100.0, clock=clock)
    try:
        await s.put(rec("old", clock.now))
        clock.now += 50
        await s.put(rec("young", clock.now))
        clock.now += 60  # "old" is 110 s old now, "young" 60 s
        assert await s.get("old", None) is None  # expired even before a prune removes it
        assert await s.get("young", None) is not None
        await s.put(rec("new", clock.now))  # a write prunes by age
        assert (await s.count())[0] == 2
    finally:
        await s.close()


async def test_size_bound_prunes_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    s = ResponseStore(tmp_path / "r.sqlite3", max_bytes=3500, clock=clock)
    try:
        for i in range(5):
            clock.now += 1
            await s.put(rec(f"r{i}", clock.now, pad=1000))
        n, size = await s.count()
        assert size <= 3500 and n == 3
        assert [await s.get(f"r{i}", None) is not None for i in range(5)] == [False, False, True, True, True]
        # the running total stays right after deletes and replacements
        await s.delete("r4", None)
        await s.put(rec("r3", clock.now, pad=1000))
        assert (await s.count())[0] == 2
    finally:
        await s.close()


async def test_a_response_larger_than_the_store_is_not_kept(tmp_path: Path) -> None:
    s = ResponseStore(tmp_path / "r.sqlite3", max_bytes=500)
    try:
        await s.put(rec("small", s.clock()))
        await s.put(rec("huge", s.clock() + 1, pad=2000))
        assert await s.get("huge", None) is None
        assert await s.get("small", None) is not None
    finally:
        await s.close()
