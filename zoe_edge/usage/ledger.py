"""The usage ledger: SQLite in WAL mode, written by one thread so the event loop never waits on the disk.

``await ledger.record(rec)`` returns once the row is committed; the fronts await it before they
send a response's last bytes, so a request the client saw answered is in the ledger even if the
daemon is killed right after (WAL with ``synchronous=NORMAL`` survives a process kill). Rows that
arrive together are committed together. A failed write (disk full, read-only file system) is
logged once per kind, shown in ``/admin/status``, and never fails the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from zoe_edge.usage import query
from zoe_edge.usage.record import COLUMNS, UsageRecord, row

log = logging.getLogger("zoe_edge.usage")

T = TypeVar("T")
_INSERT = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_STOP = object()
PRUNE_EVERY_S = 3600.0
ACK_TIMEOUT_S = 5.0  # longest a response waits for its row


class Ledger:
    def __init__(self, path: Path, retention_days: float | None) -> None:
        self.path = path
        self.retention_days = retention_days
        self.healthy = True
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failed_rows = 0
        self.written_rows = 0
        self._logged: set[str] = set()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pruner: asyncio.Task[None] | None = None

    # --- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._open)
        except (sqlite3.Error, OSError) as exc:
            self._failed("open", exc)
        self._thread = threading.Thread(target=self._run, name="zoe-ledger", daemon=True)
        self._thread.start()
        self._pruner = asyncio.create_task(self._prune_periodically(), name="zoe-ledger-prune")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level="DEFERRED")
        conn.execute("PRAGMA journal_mode=WAL")
        # a commit is in the WAL file before we acknowledge: enough for a process kill (not a power cut)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(query.SCHEMA)
        conn.commit()
        added = query.migrate(conn)
        if added:
            log.info("usage ledger %s: added column(s) %s; existing rows kept", self.path, ", ".join(added))
        self._conn = conn

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join, 10.0)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- writing ----------------------------------------------------------------------------

    async def record(self, rec: UsageRecord) -> None:
        """Commit ``rec``'s row; returns when it is durable (or its write failed and was reported)."""
        if self._loop is None:
            return
        done = self._loop.create_future()
        self._queue.put((row(rec), done))
        try:
            await asyncio.wait_for(asyncio.shield(done), ACK_TIMEOUT_S)
        except asyncio.TimeoutError:
            # a stalled disk must not stall the answers; the row is still queued and may land later
            self._failed("write", TimeoutError(f"no commit within {ACK_TIMEOUT_S:g} s"))

    def submit(self, rec: UsageRecord) -> None:
        """Queue ``rec``'s row without waiting (a cancelled request has nobody to acknowledge)."""
        if self._loop is not None:
            self._queue.put((row(rec), None))

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the writer's connection, in the writer thread, between batches."""
        assert self._loop is not None
        done: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((fn, done))
        return await done

    def _settle(self, outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        if not outcomes or self._loop is None:
            return

        def settle() -> None:
            for future, value, exc in outcomes:
                if future.done():
                    continue
                if exc is not None:
                    future.set_exception(exc)
                else:
                    future.set_result(value)

        # a closed loop (RuntimeError) means shutdown: nobody is waiting
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._write(batch)
                    return
                batch.append(more)
            self._write(batch)

    def _write(self, batch: list[Any]) -> None:
        rows = [(r, f) for r, f in batch if isinstance(r, tuple)]
        calls = [(c, f) for c, f in batch if not isinstance(c, tuple)]
        if rows:
            try:
                if self._conn is None:
                    self._open()
                assert self._conn is not None
                self._conn.executemany(_INSERT, [r for r, _ in rows])
                self._conn.commit()
                self.written_rows += len(rows)
                if not self.healthy:
                    log.warning("usage ledger %s is writable again", self.path)
                self.healthy = True
            except Exception as exc:  # the writer thread must outlive any failure
                self._rollback()
                self.failed_rows += len(rows)
                self._failed("write", exc)
            # one wake-up of the event loop for the whole batch
            self._settle([(f, None, None) for _, f in rows if f is not None])
        for fn, future in calls:
            try:
                if self._conn is None:
                    self._open()
                self._settle([(future, fn(self._conn), None)])
            except Exception as exc:
                self._rollback()
                self._failed("maintenance", exc)
                self._settle([(future, None, exc)])

    def _rollback(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.rollback()

    def _failed(self, what: str, exc: BaseException) -> None:
        self.healthy = False
        self.last_error = f"{what} failed: {exc}"
        self.last_error_at = time.time()
        kind = f"{what}:{type(exc).__name__}:{exc}"
        # once per kind: a full disk would otherwise log one line per request
        if kind not in self._logged:
            self._logged.add(kind)
            log.error("usage ledger %s: %s failed: %s; requests are still served, rows are lost", self.path, what, exc)

    # --- maintenance and reading ------------------------------------------------------------

    async def prune(self, now: float | None = None) -> int:
        """Delete rows older than the retention; the number deleted."""
        if self.retention_days is None:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400

        def delete(conn: sqlite3.Connection) -> int:
            deleted = conn.execute("DELETE FROM usage WHERE ts < ?", (cutoff,)).rowcount
            conn.commit()
            return int(deleted)

        deleted = await self.call(delete)
        if deleted:
            log.info("usage ledger: %d row(s) older than %g days deleted", deleted, self.retention_days)
        return deleted

    async def _prune_periodically(self) -> None:
        while True:
            with contextlib.suppress(sqlite3.Error, OSError):  # already reported by _failed
                await self.prune()
            await asyncio.sleep(PRUNE_EVERY_S)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query on a fresh read-only connection in a thread (WAL: readers never block the writer)."""

        def run() -> T:
            conn = query.open_readonly(str(self.path))
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "healthy": self.healthy,
            "rows_written": self.written_rows,
            "rows_failed": self.failed_rows,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "retention_days": self.retention_days,
        }
