"""The real Home Assistant 2026.11 (its unmodified ``ollama`` integration) against a real daemon.

scripts/setup-ha installs Home Assistant's own interpreter and Home Assistant (cached after the
first time); tests/ha/driver.py sets up the integration through its config flow and conversation
subentry with Assist on, in a small fixture home, and talks through conversation.async_converse.
Every turn is graded by what Home Assistant did (tests/ha/scenario.py): the entity states after a
command, the truth of a spoken answer about state, loops and errors.
"""

from __future__ import annotations

import os
import subprocess

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


@pytest.mark.timeout(2400)  # Home Assistant's set-up on a fresh machine, then eight turns on 2 cores
def test_assist_through_auto_acts_on_the_house_and_tells_the_truth(ha_python: str, ha: Daemon) -> None:
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
