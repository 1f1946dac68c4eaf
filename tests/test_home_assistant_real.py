"""The real Home Assistant 2026.11 (its unmodified ``ollama`` integration) against a real daemon.

scripts/setup-ha installs Home Assistant's own interpreter and Home Assistant (cached after the
first time); tests/ha/driver.py sets up the integration through its config flow and conversation
subentry with Assist on, in a small fixture home, and talks through conversation.async_converse.
Every turn is graded by what Home Assistant did (tests/ha/scenario.py): the entity states after a
command, the truth of a spoken answer about state, loops and errors.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon
from tests.ha.scenario import CONVERSATION, grade, run_driver


@pytest.fixture(scope="session")
def ha_python() -> str:
    """Home Assistant's interpreter; setting it up is part of the suite (about 2.5 min cold, 2 s warm)."""
    proc = subprocess.run(
        [str(REPO / "scripts" / "setup-ha")], capture_output=True, text=True, timeout=1200, env=os.environ.copy()
    )
    assert proc.returncode == 0, f"scripts/setup-ha failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout.strip().splitlines()[-1]


def _last_row(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with sqlite3.connect(ledger) as conn:
        try:
            return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM usage").fetchone()[0])
        except sqlite3.OperationalError:  # no table yet: nothing was served
            return 0


@pytest.mark.timeout(2400)  # Home Assistant's set-up on a fresh machine, then eight turns on 2 cores
def test_assist_through_auto_acts_on_the_house_and_tells_the_truth(ha_python: str, ha: Daemon) -> None:
    ledger = ha.log_path.parent / "usage.sqlite3"
    before = _last_row(ledger)
    lines = run_driver(ha_python, ha.url, "auto:latest", CONVERSATION, timeout=1500)
    setup = lines[0]
    assert setup["ha_version"] == "2026.11.0" and setup["entry_state"].endswith("LOADED"), setup
    assert setup["subentry_flow"]["data"]["llm_hass_api"] == ["assist"]
    verdicts = grade(CONVERSATION, lines)
    report = "\n".join(f"{'ok ' if v.ok else 'BAD'} {v.turn.text!r}: {v.why} -> {v.speech!r}" for v in verdicts)
    assert all(v.ok for v in verdicts), report
    assert not any(v.loop or v.error for v in verdicts), report
    log = ha.log()
    # HA asked for num_ctx 8192: the model was reloaded at it instead of silently running at 4096
    assert "context 4096 -> 8192" in log
    # every Assist turn queued as a voice turn: Home Assistant's conversation agent speaks the Ollama chat
    # API, which is interactive unless a header, route or key says otherwise (none does here)
    time.sleep(1.0)  # rows are written just after each response
    with sqlite3.connect(ledger) as conn:
        rows = conn.execute("SELECT priority, priority_reason FROM usage WHERE rowid > ?", (before,)).fetchall()
    assert rows and set(rows) == {("interactive", "Ollama chat: voice default")}, rows
