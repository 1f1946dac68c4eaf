"""Reading the ledger: ``since`` parsing and grouped summaries, shared by ``/admin/usage`` and ``zoe-edge usage``."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timezone
from typing import Any

from zoe_edge.usage.record import COLUMNS

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    {", ".join(COLUMNS)}
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
"""

# columns added after the first ledgers were written, with the value their old rows get: nothing was
# ever suspended before the scheduler could suspend, and which priority an old request had is unknown
ADDED_COLUMNS: dict[str, str | None] = {
    "priority": None,
    "priority_reason": None,
    "suspensions": "0",
    "paused_ms": "0",
    "suspend_cost_ms": "0",
}


def columns_of(conn: sqlite3.Connection) -> set[str]:
    return {str(r[1]) for r in conn.execute("PRAGMA table_info(usage)")}


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Add the columns an older ledger file lacks, keeping its rows; the columns added (committed)."""
    present = columns_of(conn)
    added = [c for c in COLUMNS if c not in present]
    for column in added:
        default = ADDED_COLUMNS.get(column)
        # column names come from COLUMNS, never from input; an added column with a constant default is
        # filled in for every old row without rewriting the table
        conn.execute(f"ALTER TABLE usage ADD COLUMN {column}" + (f" DEFAULT {default}" if default else ""))
    conn.commit()
    return added


def _col(present: set[str], column: str, sql: str, missing: str) -> str:
    """``sql`` when the column exists; ``missing`` for a file an older daemon wrote (read before it migrates)."""
    return sql if column in present else missing


GROUPS = {
    "key": "COALESCE(key_id, '-')",
    "model": "COALESCE(target, '-')",
    "route": "COALESCE(route, '-')",
    "priority": "COALESCE(priority, '-')",
    "day": "date(ts, 'unixepoch')",
}
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None, now: float) -> float:
    """Epoch seconds from ``24h``/``7d`` (ago), an ISO date or datetime (UTC unless it says), or epoch seconds.

    Absent means the last 24 hours. Raises ``ValueError`` with a readable message.
    """
    if value is None or not value.strip():
        return now - 86400
    match = _AGO.match(value)
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since={value!r}: use a duration ago (30m, 24h, 7d), an ISO date or datetime, or epoch seconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def summarize(conn: sqlite3.Connection, since: float, group_by: str) -> list[dict[str, Any]]:
    """One row per group: requests, errors, local/cloud split, cache hits, tokens, cost, mean latency, and
    how many requests were suspended for a higher priority and for how long in all."""
    present = columns_of(conn)
    expr = _col(present, "priority", GROUPS[group_by], "'-'") if group_by == "priority" else GROUPS[group_by]
    suspended = _col(present, "suspensions", "SUM(suspensions > 0)", "0")
    paused = _col(present, "paused_ms", "SUM(paused_ms)", "0")
    sql = f"""
        SELECT {expr} AS grp, COUNT(*), SUM(status >= 400), SUM(locality = 'local'), SUM(locality = 'cloud'),
               SUM(cache = 'hit'), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd),
               AVG(duration_ms), AVG(ttft_ms), {suspended}, {paused}
        FROM usage WHERE ts >= ? GROUP BY grp ORDER BY grp
    """
    out = []
    for r in conn.execute(sql, (since,)):
        out.append(
            {
                group_by: r[0],
                "requests": r[1],
                "errors": r[2] or 0,
                "local": r[3] or 0,
                "cloud": r[4] or 0,
                "cache_hits": r[5] or 0,
                "prompt_tokens": r[6] or 0,
                "completion_tokens": r[7] or 0,
                "cost_usd": round(r[8] or 0.0, 6),
                "mean_duration_ms": None if r[9] is None else round(r[9], 1),
                "mean_ttft_ms": None if r[10] is None else round(r[10], 1),
                "suspended": r[11] or 0,
                "paused_ms": round(r[12] or 0.0, 1),
            }
        )
    return out


def recent_rows(conn: sqlite3.Connection, since: float, limit: int) -> list[dict[str, Any]]:
    """The newest rows since ``since``, oldest first; every column, ``None`` where an older file lacks one."""
    present = columns_of(conn)
    select = ", ".join(c if c in present else "NULL" for c in COLUMNS)
    sql = f"SELECT {select} FROM usage WHERE ts >= ? ORDER BY id DESC LIMIT ?"
    rows = [dict(zip(COLUMNS, r, strict=True)) for r in conn.execute(sql, (since, limit))]
    rows.reverse()
    return rows


def spend_since(conn: sqlite3.Connection, since: float) -> dict[str, float]:
    """Cost by key id since ``since`` (today's start, to seed the budget book)."""
    sql = "SELECT key_id, SUM(cost_usd) FROM usage WHERE ts >= ? AND key_id IS NOT NULL GROUP BY key_id"
    return {str(k): float(v or 0.0) for k, v in conn.execute(sql, (since,))}


def open_readonly(path: str) -> sqlite3.Connection:
    """A reader beside the daemon's writer (WAL lets both work at once); never creates the file."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
