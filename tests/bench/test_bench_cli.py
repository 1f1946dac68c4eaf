"""`zoe-edge bench --quick --write` on the real SmolLM2 and Gemma, then a route that selects by score."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, start_daemon, state_dir
from zoe_edge.registry import load_registry

SELECT_ROUTE = """\
routes:
  # chosen by the bench: the best tool caller that fits this board
  zoe-best:
    targets:
      - select: {metric: tools.score, fits: true}
"""


@pytest.mark.model
@pytest.mark.timeout(2700)
def test_quick_bench_writes_scores_that_a_route_selects_by(tmp_path: Path, model_files: dict[str, Path]) -> None:
    registry = tmp_path / "models.yaml"
    original = (REPO / "models.yaml").read_text()
    assert "routes:\n" in original
    registry.write_text(original.replace("routes:\n", SELECT_ROUTE, 1))
    comments = [line.strip() for line in original.splitlines() if line.strip().startswith("#")]
    env = {**os.environ, "ZOE_STATE_DIR": str(state_dir())}
    report = tmp_path / "bench.html"
    run = subprocess.run(
        [sys.executable, "-m", "zoe_edge", "bench", "--config", str(registry), "--quick", "--write",
         "--report", str(report)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "smollm2-135m" in run.stdout and "gemma3-270m" in run.stdout  # the summary table
    # not a terminal: progress comes as log lines, ending with one per (model, suite)
    for model in ("smollm2-135m", "gemma3-270m"):
        for suite in ("latency", "hallucination", "tools"):
            assert re.search(rf"{model} {suite}: (\d+)/\1 done", run.stderr), (model, suite, run.stderr[-2000:])

    text = registry.read_text()
    for comment in comments:  # every comment of the owner's file survives
        assert comment in text, comment
    assert "# chosen by the bench" in text
    written = load_registry(registry)
    for name in ("smollm2-135m", "gemma3-270m"):
        entry = written.models[name]
        assert set(entry.bench) == {"latency", "hallucination", "tools"}
        for metric in ("tools.score", "tools.free_score", "hallucination.score", "hallucination.correct"):
            score = entry.score(metric)
            assert score is not None and score.n > 0 and score.low is not None and score.high is not None
            assert score.low <= score.value <= score.high
        latency = entry.score("latency.ttft_ha_cold_ms")
        assert latency is not None and latency.value > 0
        assert entry.bench["tools"].settings["threads"] >= 1 and entry.bench["tools"].settings["quick"] is True
        assert entry.bench["latency"].settings["ha_prompt_tokens"] > 1500  # a Home-Assistant-sized prompt

    html = report.read_text()
    # opens without network: the plot is inline, nothing is fetched
    assert "data:image/png;base64," in html and "<script" not in html
    assert 'src="http' not in html and 'href="http' not in html and "@import" not in html
    assert report.with_suffix(".png").read_bytes().startswith(b"\x89PNG")

    listing = subprocess.run(
        [sys.executable, "-m", "zoe_edge", "models", "--config", str(registry)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert "bench scores:" in listing.stdout
    assert "smollm2-135m: tools.score" in listing.stdout and "gemma3-270m: tools.score" in listing.stdout

    # the daemon resolves the select rule from the written scores and says why, in status and header
    daemon = start_daemon(registry, tmp_path, "--no-preload", wait_ready=False)
    try:
        selection = daemon.status()["selections"]["zoe-best"][0]
        assert selection["model"] in ("smollm2-135m", "gemma3-270m"), selection
        assert selection["reason"].startswith(f"select tools.score: {selection['model']}")
        bench = daemon.status()["registry"]["models"]["gemma3-270m"]["bench"]
        assert bench["tools"]["scores"]["score"]["n"] > 0
        r = httpx.post(
            daemon.v1 + "/chat/completions",
            json={"model": "zoe-best", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-zoe-served-by"] == f"local:{selection['model']}"
        assert f"select tools.score: {selection['model']}" in r.headers["x-zoe-route"]
    finally:
        daemon.stop()
