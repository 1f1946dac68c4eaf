"""A bounded in-memory LRU with TTL: never more than ``max_entries`` answers or ``max_bytes`` of payload.

Every operation is O(1) amortised (an ``OrderedDict`` in recency order); eviction happens inside
``put`` before the new entry is counted, so the bounds hold at every moment, not eventually.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class MemoryCache:
    name = "memory"

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        max_item_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes, max_bytes)
        self.clock = clock
        # key -> (payload, expires at); the first item is the least recently used
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0
        self.expirations = 0
        self.too_large = 0

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        # the payload and its key; Python's own per-entry overhead (a few hundred bytes) is bounded by max_entries
        return len(key) + len(value)

    def _drop(self, key: str) -> None:
        value, _ = self._items.pop(key)
        self._bytes -= self._size(key, value)

    def get_now(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires = item
        if expires <= self.clock():
            self._drop(key)
            self.expirations += 1
            return None
        self._items.move_to_end(key)
        return value

    def put_now(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value`` for ``ttl`` seconds; ``False`` when it is too large to keep."""
        size = self._size(key, value)
        if size > self.max_item_bytes:
            self.too_large += 1
            return False
        if key in self._items:
            self._drop(key)
        while self._items and (len(self._items) >= self.max_entries or self._bytes + size > self.max_bytes):
            oldest = next(iter(self._items))
            self._drop(oldest)
            self.evictions += 1
        self._items[key] = (value, self.clock() + ttl)
        self._bytes += size
        return True

    # the async interface every backend shares; memory never waits and never fails

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    async def put(self, key: str, value: bytes, ttl: float) -> bool:
        return self.put_now(key, value, ttl)

    def problem(self) -> str | None:
        return None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def status(self) -> dict[str, Any]:
        return {
            "healthy": True,
            "last_error": None,  # the same shape as Redis' block; memory cannot fail
            "entries": len(self._items),
            "bytes": self._bytes,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "max_item_bytes": self.max_item_bytes,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "too_large": self.too_large,
        }

    async def close(self) -> None:
        self._items.clear()
        self._bytes = 0
