"""The usage ledger under faults: SIGKILL right after a response, and a full disk (a real, tiny tmpfs)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry

HI = [{"role": "user", "content": "Say hi."}]


def registry(tmp: Path, smol: Path) -> Path:
    return write_registry(tmp, {"smol": smollm_entry(smol)}, {"zoe-chat": "smol"})


def ask(d: Daemon, stream: bool = False) -> httpx.Response:
    body = {"model": "zoe-chat", "messages": HI, "max_tokens": 4, "stream": stream}
    r = httpx.post(d.v1 + "/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r


def rows(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]


def kill(d: Daemon) -> None:
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_row_of_an_answered_request_survives_sigkill(tmp_path: Path, smollm_path: Path, stream: bool) -> None:
    reg = registry(tmp_path, smollm_path)
    db = tmp_path / "usage.sqlite3"
    d = start_daemon(reg, tmp_path)
    try:
        earlier = [ask(d).headers["x-request-id"] for _ in range(2)]
        body = {"model": "zoe-chat", "messages": HI, "max_tokens": 6, "stream": stream}
        with httpx.Client(timeout=120) as client, client.stream("POST", d.v1 + "/chat/completions", json=body) as r:
            assert r.status_code == 200
            last_id = r.headers["x-request-id"]
            if stream:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        break  # the client has its answer: kill the daemon before anything else happens
            else:
                r.read()
                assert json.loads(r.text)["choices"][0]["finish_reason"] in ("stop", "length")
            kill(d)
    finally:
        d.stop()
    found = rows(db)
    assert [r["request_id"] for r in found] == [*earlier, last_id]
    assert found[-1]["status"] == 200 and found[-1]["completion_tokens"] > 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # and a restarted daemon carries on in the same ledger
    d = start_daemon(reg, tmp_path)
    try:
        ask(d)
        listed = httpx.get(d.url + "/admin/usage", params={"limit": 10}, timeout=10).json()["rows"]
        assert [r["request_id"] for r in listed[:3]] == [*earlier, last_id] and len(listed) == 4
    finally:
        d.stop()


@pytest.fixture()
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: real ENOSPC for SQLite (we run as root); skipped where mounting is not allowed."""
    mnt = tmp_path / "ledgerfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_full_disk_keeps_serving_reports_and_loses_no_earlier_row(
    tmp_path: Path, smollm_path: Path, tiny_fs: Path
) -> None:
    db = tiny_fs / "usage.sqlite3"
    d = start_daemon(registry(tmp_path, smollm_path), tmp_path, env={"ZOE_USAGE_DB": str(db)})
    try:
        earlier = [ask(d).headers["x-request-id"] for _ in range(3)]
        assert d.status()["ledger"]["healthy"] is True
        filler = fill(tiny_fs)
        # the disk is full: answers go on, streamed or not
        during = [ask(d, stream=s) for s in (False, True, False)]
        assert all("[DONE]" in r.text or r.json()["choices"] for r in during)
        ledger = d.status()["ledger"]
        assert ledger["healthy"] is False
        assert ledger["rows_failed"] >= 1 and "full" in ledger["last_error"]
        metrics = httpx.get(d.url + "/metrics", timeout=10).text
        assert "zoe_ledger_healthy 0.0" in metrics
        # logged once per kind of failure, not once per request
        failures = [line for line in d.log().splitlines() if "usage ledger" in line and "write failed" in line]
        assert len(failures) == 1, failures
        filler.unlink()
        after = ask(d).headers["x-request-id"]
        ledger = d.status()["ledger"]
        assert ledger["healthy"] is True and "full" in ledger["last_error"]
        assert "writable again" in d.log()
    finally:
        d.stop()
    ids = [r["request_id"] for r in rows(db)]
    assert ids[:3] == earlier and ids[-1] == after
    assert len(ids) == 4 + (3 - ledger["rows_failed"])
