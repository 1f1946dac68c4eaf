"""The ledger's priority and suspension columns: filled from the gateway's choice and the Finish's timings,
shown by the queries, and added to a ledger file an older daemon wrote without losing its rows."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from zoe_edge.access.budget import SpendBook
from zoe_edge.access.limits import Limiter
from zoe_edge.canonical import Event, Finish, Priority, TextDelta, Timings, Usage
from zoe_edge.registry import parse_registry
from zoe_edge.routing.priority import PriorityChoice
from zoe_edge.service import RequestContext
from zoe_edge.usage import query
from zoe_edge.usage.ledger import Ledger
from zoe_edge.usage.metrics import Metrics
from zoe_edge.usage.observer import Observer
from zoe_edge.usage.record import COLUMNS, UsageRecord

# the columns of a ledger written before priorities (#18)
OLD_COLUMNS = COLUMNS[: COLUMNS.index("error") + 1]
REGISTRY = parse_registry({"default": "m", "models": {"m": {"file": "/x.gguf"}}})


def old_ledger(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        f"CREATE TABLE usage (id INTEGER PRIMARY KEY, {', '.join(OLD_COLUMNS)}); CREATE INDEX usage_ts ON usage (ts);"
    )
    now = time.time()
    for i in range(rows):
        values = {c: None for c in OLD_COLUMNS} | {
            "ts": now - i,
            "request_id": f"old{i}",
            "endpoint": "/api/chat",
            "status": 200,
            "prompt_tokens": 7,
            "completion_tokens": 2,
            "cached_tokens": 0,
            "duration_ms": 40.0,
            "cost_usd": 0.0,
            "locality": "local",
        }
        conn.execute(
            f"INSERT INTO usage ({', '.join(OLD_COLUMNS)}) VALUES ({', '.join('?' for _ in OLD_COLUMNS)})",
            [values[c] for c in OLD_COLUMNS],
        )
    conn.commit()
    conn.close()


def observer(ledger: Ledger) -> Observer:
    return Observer(REGISTRY, Metrics(), ledger, SpendBook(), Limiter())


async def answered(obs: Observer, rec: UsageRecord, timings: Timings) -> None:
    async def events() -> AsyncGenerator[Event, None]:
        yield TextDelta("ok")
        yield Finish("stop", Usage(5, 1), timings)

    async for _ in obs.wrap(rec, events(), lambda: "bypass"):
        pass


async def test_rows_record_the_priority_and_how_long_the_request_was_suspended(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "u.sqlite3", retention_days=None)
    await ledger.start()
    obs = observer(ledger)
    try:
        for request_id, choice, timings in (
            ("bg", PriorityChoice(Priority.BACKGROUND, "route 'ha-tasks'"), Timings(10, 20, 0, 2, 850.5, 31.25)),
            ("voice", PriorityChoice(Priority.INTERACTIVE, "Ollama chat: voice default"), Timings(5, 6)),
        ):
            ctx = RequestContext(request_id, usage=obs.start(request_id, "/api/chat"))
            ctx.use_priority(choice)
            assert ctx.usage is not None
            await answered(obs, ctx.usage, timings)
        rows = await ledger.read(lambda conn: query.recent_rows(conn, 0, 10))
        groups = await ledger.read(lambda conn: query.summarize(conn, 0, "priority"))
        day = await ledger.read(lambda conn: query.summarize(conn, 0, "day"))
    finally:
        await ledger.close()
    bg, voice = rows
    assert (bg["priority"], bg["priority_reason"]) == ("background", "route 'ha-tasks'")
    assert (bg["suspensions"], bg["paused_ms"], bg["suspend_cost_ms"]) == (2, 850.5, 31.25)
    assert (voice["priority"], voice["suspensions"], voice["paused_ms"]) == ("interactive", 0, 0.0)
    by = {g["priority"]: g for g in groups}
    assert by["background"]["suspended"] == 1 and by["background"]["paused_ms"] == 850.5
    assert by["interactive"]["suspended"] == 0 and by["interactive"]["requests"] == 1
    assert day[0]["suspended"] == 1 and day[0]["requests"] == 2


async def test_an_old_ledger_gains_the_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "usage.sqlite3"
    old_ledger(db, rows=3)
    # read before any daemon migrated it (zoe-edge usage beside an older daemon): the new fields are empty
    conn = query.open_readonly(str(db))
    try:
        before = query.recent_rows(conn, 0, 10)
        grouped = query.summarize(conn, 0, "priority")
    finally:
        conn.close()
    assert len(before) == 3 and before[0]["priority"] is None and before[0]["suspensions"] is None
    assert grouped == [grouped[0]] and grouped[0]["priority"] == "-" and grouped[0]["requests"] == 3

    ledger = Ledger(db, retention_days=None)
    await ledger.start()
    obs = observer(ledger)
    try:
        ctx = RequestContext("new", usage=obs.start("new", "/v1/chat/completions"))
        ctx.use_priority(PriorityChoice(Priority.NORMAL, "openai-chat: default"))
        assert ctx.usage is not None
        await answered(obs, ctx.usage, Timings(suspensions=1, paused_ms=12.0, suspend_cost_ms=3.0))
        rows = await ledger.read(lambda conn: query.recent_rows(conn, 0, 10))
    finally:
        await ledger.close()
    assert ledger.healthy and ledger.written_rows == 1
    assert [r["request_id"] for r in rows] == ["old0", "old1", "old2", "new"]  # by id, as written
    old = rows[0]
    # nothing was suspended before the scheduler could suspend; the old rows' priority is unknown
    assert (old["priority"], old["suspensions"], old["paused_ms"], old["suspend_cost_ms"]) == (None, 0, 0, 0)
    assert old["prompt_tokens"] == 7 and old["endpoint"] == "/api/chat"  # the old data is all there
    assert (rows[-1]["priority"], rows[-1]["suspensions"], rows[-1]["paused_ms"]) == ("normal", 1, 12.0)
    conn = sqlite3.connect(db)
    try:
        assert query.migrate(conn) == []  # once migrated, a restart adds nothing
        assert set(COLUMNS) <= query.columns_of(conn)
    finally:
        conn.close()
