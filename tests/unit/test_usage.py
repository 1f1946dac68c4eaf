"""The ledger's record, queries and metric labels, on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from zoe_edge.errors import Failure
from zoe_edge.usage import query
from zoe_edge.usage.ledger import Ledger
from zoe_edge.usage.metrics import Metrics
from zoe_edge.usage.record import UsageRecord

NOW = 1_700_000_000.0


def rec(i: int, base: float = NOW, **kw: object) -> UsageRecord:
    r = UsageRecord(ts=base - i, started=time.perf_counter(), request_id=f"r{i}", endpoint="/v1/chat/completions")
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_parse_since() -> None:
    assert query.parse_since("24h", NOW) == NOW - 86400
    assert query.parse_since("30m", NOW) == NOW - 1800
    assert query.parse_since(None, NOW) == NOW - 86400
    assert query.parse_since("2023-11-14", NOW) == 1699920000.0
    assert query.parse_since("2023-11-14T22:13:20Z", NOW) == NOW
    assert query.parse_since(str(NOW), NOW) == NOW
    with pytest.raises(ValueError, match="duration ago"):
        query.parse_since("yesterday", NOW)


def test_every_failure_kind_has_a_status_and_fallback_only_where_another_target_helps() -> None:
    for kind in Failure:
        assert 400 <= kind.status < 600, kind
    assert Failure.BUSY.fallback == "local model busy" and Failure.BUSY.status == 503
    assert Failure.INVALID_REQUEST.fallback is None and Failure.CONTEXT_LENGTH_EXCEEDED.fallback is None
    # a code from outside the set (an upstream's own) is read by its status
    assert Failure.of("teapot", 418) is Failure.INVALID_REQUEST and Failure.of("weird", 502) is Failure.SERVER_ERROR
    assert Failure.of(None, 429) is Failure.UPSTREAM_RATE_LIMITED
    assert Failure.of("budget_exceeded", 429) is Failure.OVER_BUDGET


async def test_ledger_commits_groups_and_prunes(tmp_path: Path) -> None:
    db = tmp_path / "u.sqlite3"
    ledger = Ledger(db, retention_days=1)
    await ledger.start()
    now = time.time()
    records = [
        rec(0, now, key_id="ha", route="chat", target="local:smol", locality="local", status=200, prompt_tokens=5),
        rec(1, now, key_id="ha", route="chat", target="cloud:gpt", locality="cloud", status=200, cost_usd=0.5),
        rec(2, now, key_id="bob", route="chat", target=None, status=404, error="no such model"),
    ]
    await asyncio.gather(*(ledger.record(r) for r in records))
    assert ledger.written_rows == 3 and ledger.healthy
    # committed: another connection sees the rows at once
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 3
    groups = await ledger.read(lambda c: query.summarize(c, now - 86400, "key"))
    assert [(g["key"], g["requests"], g["errors"], g["cost_usd"]) for g in groups] == [
        ("bob", 1, 1, 0.0),
        ("ha", 2, 0, 0.5),
    ]
    assert await ledger.read(lambda c: query.spend_since(c, now - 86400)) == {"ha": 0.5, "bob": 0.0}
    await ledger.record(rec(3 * 86400, now, key_id="old", status=200))  # three days old
    assert await ledger.prune() == 1
    rows = await ledger.read(lambda c: query.recent_rows(c, 0, 10))
    assert [r["request_id"] for r in rows] == ["r0", "r1", "r2"]  # insertion order
    await ledger.close()


async def test_unwritable_ledger_reports_and_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the ledger's directory should be")
    ledger = Ledger(blocker / "u.sqlite3", retention_days=None)
    await ledger.start()
    await ledger.record(rec(0, status=200))  # returns: the request is not failed by the ledger
    status = ledger.status()
    assert status["healthy"] is False and status["rows_failed"] == 1 and status["last_error"]
    await ledger.close()


def test_metrics_from_one_record() -> None:
    m = Metrics()
    m.observe(
        rec(
            0,
            route="chat",
            target="cloud:gpt",
            locality="cloud",
            status=200,
            prompt_tokens=10,
            completion_tokens=3,
            cached_tokens=8,
            ttft_ms=12.0,
            duration_ms=40.0,
            cost_usd=0.25,
            key_id="ha",
            cache="miss",
            skipped=[Failure.BUSY],
        )
    )
    text = m.render().decode()
    assert 'zoe_requests_total{route="chat",status="200",target="cloud:gpt"} 1.0' in text
    assert 'zoe_tokens_total{kind="cached"} 8.0' in text
    assert "zoe_prompt_cached_tokens_total 8.0" in text and "zoe_prefix_hits_total 1.0" in text
    assert 'zoe_fallbacks_total{reason="busy"} 1.0' in text
    assert 'zoe_cache_requests_total{status="miss"} 1.0' in text
    assert 'zoe_cost_usd_total{key="ha"} 0.25' in text
    assert 'zoe_ttft_seconds_bucket{le="0.025",locality="cloud"} 1.0' in text
    # a second app's metrics are its own
    assert "zoe_requests_total{" not in Metrics().render().decode()
