"""Per-key requests-per-minute and tokens-per-minute limits: a pure sliding window over one-second buckets.

Memory per key is bounded (at most 60 buckets) whatever the request rate, and a decision costs
at most 60 steps. The window is the last 60 seconds; ``retry_after`` is when enough of it will
have slid out for the next request to pass.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

WINDOW_S = 60


@dataclass(frozen=True)
class Decision:
    allow: bool
    retry_after: float = 0.0
    reason: str = ""


ALLOW = Decision(True)


@dataclass
class _Bucket:
    second: int
    requests: int = 0
    tokens: int = 0


class Window:
    """One key's last minute of requests and tokens."""

    def __init__(self) -> None:
        self.buckets: collections.deque[_Bucket] = collections.deque()

    def _trim(self, second: int) -> None:
        while self.buckets and self.buckets[0].second <= second - WINDOW_S:
            self.buckets.popleft()

    def _bucket(self, second: int) -> _Bucket:
        if not self.buckets or self.buckets[-1].second != second:
            self.buckets.append(_Bucket(second))
        return self.buckets[-1]

    def totals(self, now: float) -> tuple[int, int]:
        self._trim(math.floor(now))
        return sum(b.requests for b in self.buckets), sum(b.tokens for b in self.buckets)

    def _wait_until_below(self, now: float, limit: int, attr: str) -> float:
        """Seconds until the window's total of ``attr`` falls below ``limit``."""
        total = sum(getattr(b, attr) for b in self.buckets)
        for b in self.buckets:
            total -= getattr(b, attr)
            if total < limit:
                return max(0.0, b.second + WINDOW_S - now)
        return float(WINDOW_S)

    def decide(self, now: float, rpm: int | None, tpm: int | None) -> Decision:
        """Whether one more request may start now; a request that passes is counted."""
        requests, tokens = self.totals(now)
        if rpm is not None and requests >= rpm:
            wait = self._wait_until_below(now, rpm, "requests")
            return Decision(False, wait, f"rate limit of {rpm} requests per minute reached")
        if tpm is not None and tokens >= tpm:
            wait = self._wait_until_below(now, tpm, "tokens")
            return Decision(False, wait, f"rate limit of {tpm} tokens per minute reached ({tokens} used)")
        self._bucket(math.floor(now)).requests += 1
        return ALLOW

    def charge(self, now: float, tokens: int) -> None:
        """Tokens a finished request used (known only after it ends)."""
        self._trim(math.floor(now))
        self._bucket(math.floor(now)).tokens += tokens


class Limiter:
    """Windows by key id, created for keys that have limits only."""

    def __init__(self) -> None:
        self.windows: dict[str, Window] = {}

    def decide(self, key_id: str, now: float, rpm: int | None, tpm: int | None) -> Decision:
        if rpm is None and tpm is None:
            return ALLOW
        window = self.windows.get(key_id)
        if window is None:
            window = self.windows[key_id] = Window()
        return window.decide(now, rpm, tpm)

    def charge(self, key_id: str, now: float, tokens: int) -> None:
        window = self.windows.get(key_id)
        if window is not None and tokens > 0:
            window.charge(now, tokens)
