"""Stored responses: SQLite in the state directory, one thread, bounded by age and total size.

Every operation runs on one dedicated thread, in the order it was asked for: a response saved
without waiting (the fronts save from synchronous render code) is seen by any later lookup, so a
client that chains ``previous_response_id`` right after an answer always finds it. The database
is opened on first use, so a daemon that never serves the Responses API leaves no file behind.

Visibility is per owner (the client key's id, ``None`` when the daemon has no keys): a response
is found only by the owner that stored it, and for anyone else it does not exist.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("zoe_edge.conversations")

T = TypeVar("T")

DEFAULT_MAX_AGE_S = 30 * 86400.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# a chain longer than this is cut at its oldest end: a runaway loop of calls must not rebuild forever
MAX_CHAIN = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT,
    created_at REAL NOT NULL,
    previous_id TEXT,
    input TEXT NOT NULL,
    response TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""

# the rows past the newest ``max_bytes`` (by created_at, then insertion order), oldest first
_OVER_SIZE = """
DELETE FROM responses WHERE rowid IN (
    SELECT rowid FROM (
        SELECT rowid, SUM(size) OVER (ORDER BY created_at DESC, rowid DESC) AS running FROM responses
    ) WHERE running > ?
)
"""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    owner: str | None  # the client key's id; None when the daemon has no keys
    created_at: float
    previous_id: str | None
    input_items: list[dict[str, Any]]  # the items this request sent (not the history before them)
    response: dict[str, Any]  # the whole response object as the client received it

    @property
    def items(self) -> list[dict[str, Any]]:
        """What this turn adds to a conversation: its input, then its output."""
        return [*self.input_items, *self.response.get("output", [])]


class ResponseStore:
    def __init__(
        self,
        path: Path,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoe-responses")
        self._conn: sqlite3.Connection | None = None
        self._total: int | None = None  # bytes stored, counted once on open and kept up to date
        self._failed: set[str] = set()

    # --- lifetime ---------------------------------------------------------------------------

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            conn.commit()
            self._conn = conn
            self._prune_age(conn)
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(self._db()))

    # --- writing ----------------------------------------------------------------------------

    def save(self, rec: StoredResponse) -> concurrent.futures.Future[None]:
        """Queue ``rec`` without waiting; every later call of this store sees it. A failed write is logged."""
        return self._executor.submit(self._save_logged, rec)

    async def put(self, rec: StoredResponse) -> None:
        """Save ``rec`` and wait until it is committed (raises when the write fails)."""
        await self._run(lambda conn: self._insert(conn, rec))

    def _save_logged(self, rec: StoredResponse) -> None:
        try:
            self._insert(self._db(), rec)
        except (sqlite3.Error, OSError) as exc:
            kind = type(exc).__name__
            if kind not in self._failed:
                self._failed.add(kind)
                log.error("responses store %s: cannot save %s (%s); it will not be retrievable", self.path, rec.id, exc)

    def _insert(self, conn: sqlite3.Connection, rec: StoredResponse) -> None:
        input_json = json.dumps(rec.input_items, ensure_ascii=False, separators=(",", ":"))
        response_json = json.dumps(rec.response, ensure_ascii=False, separators=(",", ":"))
        size = len(input_json.encode()) + len(response_json.encode())
        before = self._stored_bytes(conn)
        with conn:
            old = conn.execute("SELECT size FROM responses WHERE id = ?", (rec.id,)).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO responses (id, owner, created_at, previous_id, input, response, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rec.id, rec.owner, rec.created_at, rec.previous_id, input_json, response_json, size),
            )
        self._total = before + size - (old[0] if old else 0)
        self._prune_age(conn)
        if self._stored_bytes(conn) > self.max_bytes:
            self._prune_size(conn)
            if size > self.max_bytes:
                log.warning("response %s (%d bytes) is larger than the whole store (%d bytes): not kept",
                            rec.id, size, self.max_bytes)

    def _stored_bytes(self, conn: sqlite3.Connection) -> int:
        if self._total is None:
            self._total = int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0])
        return self._total

    def _prune_age(self, conn: sqlite3.Connection) -> None:
        with conn:
            gone = conn.execute("DELETE FROM responses WHERE created_at < ?", (self.clock() - self.max_age_s,))
        if gone.rowcount:
            self._total = None
            log.info("responses store: %d response(s) older than %g days pruned", gone.rowcount,
                     self.max_age_s / 86400)

    def _prune_size(self, conn: sqlite3.Connection) -> None:
        with conn:
            # one response over the whole bound goes alone, rather than taking every older one with it
            conn.execute("DELETE FROM responses WHERE size > ?", (self.max_bytes,))
            gone = conn.execute(_OVER_SIZE, (self.max_bytes,))
        self._total = None
        if gone.rowcount:
            log.info("responses store: %d oldest response(s) pruned to stay under %d bytes", gone.rowcount,
                     self.max_bytes)

    async def delete(self, response_id: str, owner: str | None) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with conn:
                gone = conn.execute("DELETE FROM responses WHERE id = ? AND owner IS ?", (response_id, owner))
            self._total = None
            return gone.rowcount > 0

        return await self._run(delete)

    # --- reading ----------------------------------------------------------------------------

    def _get(self, conn: sqlite3.Connection, response_id: str, owner: str | None) -> StoredResponse | None:
        row = conn.execute(
            "SELECT id, owner, created_at, previous_id, input, response FROM responses "
            "WHERE id = ? AND owner IS ? AND created_at >= ?",
            (response_id, owner, self.clock() - self.max_age_s),
        ).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5]))

    async def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        """The response if ``owner`` stored it and it is still kept; ``None`` otherwise (the same for both)."""
        return await self._run(lambda conn: self._get(conn, response_id, owner))

    async def chain(self, response_id: str, owner: str | None) -> list[StoredResponse] | None:
        """The response and every one it continues, oldest first; ``None`` when the response itself is gone.

        A link pruned or deleted from the middle ends the chain there: the turns before it are lost.
        """

        def walk(conn: sqlite3.Connection) -> list[StoredResponse] | None:
            out: list[StoredResponse] = []
            next_id: str | None = response_id
            while next_id is not None and len(out) < MAX_CHAIN:
                rec = self._get(conn, next_id, owner)
                if rec is None:
                    break
                out.append(rec)
                next_id = rec.previous_id
            return out[::-1] if out else None

        return await self._run(walk)

    async def count(self) -> tuple[int, int]:
        """Responses kept and their bytes (for tests and status)."""

        def count(conn: sqlite3.Connection) -> tuple[int, int]:
            n, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses").fetchone()
            return int(n), int(size)

        return await self._run(count)
