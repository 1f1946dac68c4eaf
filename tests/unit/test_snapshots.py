"""The on-disk prefix snapshot store, and the prefix cache's use of it, without llama.cpp.

A fake model stands in for llama.cpp's sequence state: its "KV state" is the token list packed as
bytes, so a restore from disk can be checked token for token.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import time
from pathlib import Path
from typing import Any, cast

import pytest

from zoe_edge.worker import snapshots
from zoe_edge.worker.prefix import PrefixCache
from zoe_edge.worker.snapshots import SnapshotStore, StoreKey


def buffer(payload: bytes) -> ctypes.Array[ctypes.c_uint8]:
    return (ctypes.c_uint8 * len(payload)).from_buffer_copy(payload)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)
    return path


def key_for(model: Path, n_ctx: int = 4096) -> StoreKey:
    return StoreKey.for_model(str(model), "auto\n{{ messages }}", n_ctx, "f16", "0.3.test")


def store_at(tmp_path: Path, model: Path, **kw: Any) -> SnapshotStore:
    return SnapshotStore(tmp_path / "prefix", key_for(model), **kw)


def test_round_trip_keeps_tokens_and_payload(tmp_path: Path, model_file: Path) -> None:
    store = store_at(tmp_path, model_file)
    payload = os.urandom(5000)
    path = store.write([1, 2, 3, 4], 3, buffer(payload), len(payload), set())
    assert path is not None and path.parent == tmp_path / "prefix"
    assert not list(path.parent.glob(".*.tmp"))  # written through a temp file renamed into place
    [entry] = store_at(tmp_path, model_file).scan()
    assert entry.tokens == (1, 2, 3, 4) and entry.prompt_len == 3
    data = store.read(entry)
    assert data is not None and bytes(data) == payload


def test_same_prefix_is_written_once(tmp_path: Path, model_file: Path) -> None:
    store = store_at(tmp_path, model_file)
    first = store.write([7, 8], 2, buffer(b"x" * 10), 10, set())
    again = store.write([7, 8], 2, buffer(b"y" * 10), 10, set())
    assert first == again and len(store.scan()) == 1


def _corrupt_cases(path: Path, other_header: bytes) -> dict[str, bytes]:
    good = path.read_bytes()
    return {
        "truncated": good[: len(good) - 100],
        "random": os.urandom(4096),
        "empty": b"",
        "flipped payload byte": good[:-1] + bytes([good[-1] ^ 0xFF]),
        "other model's header": other_header,
    }


def test_corrupt_truncated_and_foreign_files_are_ignored_and_deleted(tmp_path: Path, model_file: Path) -> None:
    store = store_at(tmp_path, model_file)
    payload = os.urandom(2000)
    path = store.write(list(range(300)), 300, buffer(payload), len(payload), set())
    assert path is not None
    # a valid file of another model, put under a name that claims this model's key
    other_model = tmp_path / "other.gguf"
    other_model.write_bytes(b"GGUF other")
    other = SnapshotStore(tmp_path / "elsewhere", key_for(other_model))
    other_path = other.write(list(range(300)), 300, buffer(payload), len(payload), set())
    assert other_path is not None
    bad = {}
    for i, (why, content) in enumerate(_corrupt_cases(path, other_path.read_bytes()).items()):
        target = path.parent / f"{store.digest}-bad{i:013d}{snapshots.SUFFIX}"
        target.write_bytes(content)
        bad[why] = target
    entries = store_at(tmp_path, model_file).scan()
    # the flipped byte passes the header check; its checksum fails when it is read
    survivors = {e.path for e in entries}
    assert survivors == {path, bad["flipped payload byte"]}
    for why, target in bad.items():
        if why != "flipped payload byte":
            assert not target.exists(), why
    flipped = next(e for e in entries if e.path == bad["flipped payload byte"])
    assert store.read(flipped) is None and not flipped.path.exists()
    good = next(e for e in entries if e.path == path)
    assert store.read(good) is not None


def test_files_of_a_changed_or_vanished_model_are_deleted_others_kept(tmp_path: Path, model_file: Path) -> None:
    directory = tmp_path / "prefix"
    other_model = tmp_path / "other.gguf"
    other_model.write_bytes(b"GGUF other")
    gone_model = tmp_path / "gone.gguf"
    gone_model.write_bytes(b"GGUF gone")
    kept = SnapshotStore(directory, key_for(other_model)).write([1], 1, buffer(b"a"), 1, set())
    gone = SnapshotStore(directory, key_for(gone_model)).write([2], 1, buffer(b"b"), 1, set())
    bigger = SnapshotStore(directory, key_for(model_file, n_ctx=8192)).write([3], 1, buffer(b"c"), 1, set())
    assert kept and gone and bigger
    gone_model.unlink()
    # the model file was replaced: same path, new contents, so this worker's key differs from the old one
    stale = SnapshotStore(directory, key_for(model_file)).write([4], 1, buffer(b"d"), 1, set())
    assert stale is not None
    time.sleep(0.01)
    model_file.write_bytes(b"GGUF replaced, longer")
    assert store_at(tmp_path, model_file).scan() == []
    assert kept.exists()  # another model, still as it was: its snapshots wait for its next worker
    assert not gone.exists() and not stale.exists() and not bigger.exists()


def test_bounds_evict_oldest_and_never_what_this_exit_wrote(tmp_path: Path, model_file: Path) -> None:
    store = store_at(tmp_path, model_file, max_bytes=10_000, max_files=3)
    paths = []
    for i in range(5):
        p = store.write([i], 1, buffer(b"z" * 1000), 1000, set())
        assert p is not None
        os.utime(p, (time.time() - 100 + i, time.time() - 100 + i))
        paths.append(p)
    files = sorted((tmp_path / "prefix").glob("*" + snapshots.SUFFIX))
    assert len(files) == 3 and set(files) == set(paths[2:])
    # bytes: a 6 KB snapshot leaves room for one of the 1 KB ones
    big = store.write([99], 1, buffer(b"b" * 6000), 6000, set())
    assert big is not None
    total = sum(f.stat().st_size for f in (tmp_path / "prefix").glob("*" + snapshots.SUFFIX))
    assert total <= 10_000
    # when only what this exit already wrote could make room, the new one is dropped instead
    assert store.write([100], 1, buffer(b"n" * 6000), 6000, {big}) is None
    assert big.exists()
    # larger than the whole budget: never written
    assert store.write([101], 1, buffer(b"h" * 20_000), 20_000, set()) is None


def test_header_records_key_fields_and_checksum(tmp_path: Path, model_file: Path) -> None:
    store = store_at(tmp_path, model_file)
    path = store.write([5, 6, 7], 2, buffer(b"q" * 64), 64, set())
    assert path is not None
    raw = path.read_bytes()
    assert raw.startswith(snapshots.MAGIC)
    (length,) = struct.unpack(">I", raw[len(snapshots.MAGIC) : len(snapshots.MAGIC) + 4])
    header = json.loads(raw[len(snapshots.MAGIC) + 4 : len(snapshots.MAGIC) + 4 + length])
    assert header["format"] == snapshots.FORMAT and header["tokens"] == [5, 6, 7]
    assert header["key"]["n_ctx"] == 4096 and header["key"]["kv_cache_type"] == "f16"
    assert header["key"]["llama_cpp"] == "0.3.test" and header["key"]["model_path"] == str(model_file.resolve())
    assert isinstance(header["payload_crc32"], int) and header["payload_size"] == 64


def test_snapshot_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ZOE_PREFIX_DIR", raising=False)
    monkeypatch.setenv("ZOE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("ZOE_PREFIX_PERSIST", "1")
    assert snapshots.snapshot_dir() == tmp_path / "prefix"
    monkeypatch.setenv("ZOE_PREFIX_DIR", str(tmp_path / "x"))
    assert snapshots.snapshot_dir() == tmp_path / "x"
    monkeypatch.setenv("ZOE_PREFIX_PERSIST", "0")
    assert snapshots.snapshot_dir() is None


class FakeModel:
    """The Model calls the prefix cache makes; the sequence state is the token list as int32s."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def cached_tokens(self) -> list[int]:
        return list(self.tokens)

    def kv_remove_from(self, position: int) -> None:
        del self.tokens[position:]

    def forget_tokens(self) -> None:
        self.tokens = []

    def adopt_tokens(self, tokens: Any) -> None:
        self.tokens = list(tokens)

    def seq_state_size(self) -> int:
        return 4 * len(self.tokens)

    def seq_state_save(self, size: int) -> tuple[ctypes.Array[ctypes.c_uint8], int]:
        return buffer(struct.pack(f"<{len(self.tokens)}i", *self.tokens)), size

    def seq_state_load(self, data: ctypes.Array[ctypes.c_uint8], size: int) -> int:
        self.loaded = list(struct.unpack(f"<{size // 4}i", bytes(data)[:size]))
        return size

    def evaluate(self, prompt: list[int]) -> None:
        """What ``generate`` does with the prompt: keep the shared prefix, evaluate the rest."""
        self.tokens = [*list(prompt), 9999]


def cache_with_store(tmp_path: Path, model_file: Path, model: FakeModel) -> PrefixCache:
    cache = PrefixCache(cast(Any, model), budget_bytes=1 << 20, min_tokens=256)
    cache.attach_store(store_at(tmp_path, model_file))
    return cache


def test_a_long_prompt_survives_the_worker_and_is_restored_lazily(tmp_path: Path, model_file: Path) -> None:
    system = list(range(1000, 1600))  # a 600-token "system prompt"
    old = FakeModel()
    cache = cache_with_store(tmp_path, model_file, old)
    cache.prepare([*system, 1, 2])
    old.evaluate([*system, 1, 2])
    cache.note_prompt(len(system) + 2)
    assert cache.persist(3.0) == 1

    new = FakeModel()
    fresh = cache_with_store(tmp_path, model_file, new)
    assert fresh.stats()["disk_snapshots"] == 1
    decision = fresh.prepare([*system, 3, 4])
    assert decision is not None and decision.restore is not None
    assert new.tokens == [*system, 1, 2, 9999] and new.loaded == new.tokens
    stats = fresh.stats()
    assert stats["disk_restores"] == 1 and stats["restores"] == 1 and stats["snapshots"] == 1
    # a short prompt is not worth a file
    tiny = FakeModel()
    short = cache_with_store(tmp_path / "short", model_file, tiny)
    tiny.evaluate([1, 2, 3])
    short.note_prompt(3)
    assert short.persist(3.0) == 0


def test_a_corrupt_file_found_on_restore_means_a_cold_prompt(tmp_path: Path, model_file: Path) -> None:
    system = list(range(600))
    old = FakeModel()
    cache = cache_with_store(tmp_path, model_file, old)
    old.evaluate(system)
    cache.note_prompt(len(system))
    assert cache.persist(3.0) == 1
    [path] = (tmp_path / "prefix").glob("*" + snapshots.SUFFIX)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x55
    path.write_bytes(bytes(raw))
    new = FakeModel()
    fresh = cache_with_store(tmp_path, model_file, new)
    decision = fresh.prepare([*system, 5])
    assert decision is not None and new.tokens == []  # nothing restored: generate evaluates it all
    assert fresh.stats()["disk_discarded"] == 1 and fresh.stats()["disk_restores"] == 0
    assert not path.exists()
