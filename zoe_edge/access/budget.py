"""Daily cloud budgets: today's spend per key (UTC days), and whether a key may still use cloud targets."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from zoe_edge.access.keys import ClientKey


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def day_start(ts: float) -> float:
    """The epoch second today's UTC day began."""
    return float(int(ts) - int(ts) % 86400)


def seconds_to_midnight(ts: float) -> float:
    return day_start(ts) + 86400 - ts


class SpendBook:
    """Today's spend by key id; seeded from the ledger at start so it survives restarts."""

    def __init__(self, today: dict[str, float] | None = None, now: float | None = None) -> None:
        self.day = utc_day(time.time() if now is None else now)
        self.spent: dict[str, float] = dict(today or {})

    def _roll(self, now: float) -> None:
        day = utc_day(now)
        if day != self.day:
            self.day, self.spent = day, {}

    def add(self, key_id: str, cost: float, now: float) -> None:
        self._roll(now)
        if cost > 0:
            self.spent[key_id] = self.spent.get(key_id, 0.0) + cost

    def over_budget(self, key: ClientKey, now: float) -> str | None:
        """Why ``key`` must stay local for the rest of the day, or ``None``."""
        if key.daily_budget_usd is None:
            return None
        self._roll(now)
        spent = self.spent.get(key.id, 0.0)
        if spent < key.daily_budget_usd:
            return None
        return f"key {key.id!r} spent ${spent:.4f} of its ${key.daily_budget_usd:.2f} daily cloud budget"
