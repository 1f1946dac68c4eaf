"""`zoe-edge bench --suites assist --quick --write` on the real SmolLM2: Home Assistant's loop, graded by effect."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, state_dir
from zoe_edge.registry import load_registry


@pytest.mark.model
@pytest.mark.timeout(1800)
def test_quick_assist_suite_writes_per_pass_scores(tmp_path: Path, smollm_path: Path) -> None:
    registry = tmp_path / "models.yaml"
    registry.write_text((REPO / "models.yaml").read_text())
    out = tmp_path / "assist.json"
    env = {**os.environ, "ZOE_STATE_DIR": str(state_dir())}
    run = subprocess.run(
        [sys.executable, "-m", "zoe_edge", "bench", "--config", str(registry), "--models", "smollm2-135m",
         "--suites", "assist", "--quick", "--write", "--json", str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"smollm2-135m assist: (\d+)/\1 done", run.stderr), run.stderr[-2000:]
    assert "assist suite, per pass:" in run.stdout

    entry = load_registry(registry).models["smollm2-135m"]
    record = entry.bench["assist"]
    # raw (no planner), the model's own name through the dispatcher, and the auto router (which
    # sends every case of the default registry to SmolLM2)
    assert record.settings["passes"] == {"raw": "smollm2-135m", "model": "smollm2-135m", "route_auto": "auto"}
    for prefix in ("", "raw_", "route_auto_"):
        for name in ("command_success", "truthful_answers", "chat_ok", "loops", "errors"):
            score = entry.score(f"assist.{prefix}{name}")
            assert score is not None and score.n > 0 and score.low is not None and score.high is not None
            assert score.low <= score.value <= score.high
        turn = entry.score(f"assist.{prefix}turn_ms")
        assert turn is not None and turn.value > 0

    rows = json.loads(out.read_text())[0]["cases"]
    assert {r["pass"] for r in rows} == {"raw", "model", "route_auto"}
    planned = [r for r in rows if r["pass"] == "model"]
    # the planner forbids a second call after a result: no planned turn may loop
    assert not any(r["loop"] for r in planned), [r["id"] for r in planned if r["loop"]]
    # every planned command made exactly one call, to an offered tool, and HA executed it
    for r in planned:
        if r["kind"] == "command" and r["id"] != "on-missing-sauna":
            assert len(r["calls"]) == 1 and "__" in r["calls"][0]["name"], r
    # the planner's forced call turns on the coffee maker, whatever the tiny model would have said
    coffee = next(r for r in planned if r["id"] == "on-coffee-maker")
    assert coffee["ok"], coffee
