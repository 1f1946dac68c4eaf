"""bench/run_all.py rewrites only its own part of RESULTS.md and reports a miss as a miss."""

from __future__ import annotations

import datetime as dt

from bench.report import Report
from bench.run_all import BEGIN, END, render, rewrite

WHEN = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)


def result(met: bool) -> dict[str, object]:
    return {
        "bench": "prefix",
        "title": "Prefix reuse",
        "command": ".venv/bin/python bench/prefix.py",
        "lines": ["ratio warm/cold: 0.2"],
        "targets": [{"name": "TTFT warm / cold", "target": "<= 0.15", "measured": 0.2, "unit": "ratio", "met": met}],
    }


def test_rewrite_keeps_everything_outside_the_markers() -> None:
    old = f"# Results\n\nhand-written\n\n{BEGIN}\nold figures\n{END}\n\n## Bench scores\nkept\n"
    new = rewrite(old, f"{BEGIN}\nnew figures\n{END}")
    assert new == f"# Results\n\nhand-written\n\n{BEGIN}\nnew figures\n{END}\n\n## Bench scores\nkept\n"


def test_rewrite_appends_when_there_are_no_markers() -> None:
    assert rewrite("# Results\n", f"{BEGIN}\nx\n{END}") == f"# Results\n\n{BEGIN}\nx\n{END}\n"


def test_render_states_target_measured_and_verdict() -> None:
    text = render([result(False), {"bench": "peer", "skipped": "not here"}], {"cpu": "test"}, False, WHEN)
    assert "| prefix | TTFT warm / cold | <= 0.15 | 0.200 | **MISSED** |" in text
    assert "| peer | (skipped: not here) |" in text
    assert "$ .venv/bin/python bench/prefix.py" in text and "2026-11-23 12:00 UTC" in text
    assert "| MET |" in render([result(True)], {"cpu": "test"}, False, WHEN)


def test_report_target_verdicts() -> None:
    r = Report("x", "x")
    assert r.target("a", "<= 0.15", 0.15) and not r.target("b", "<= 0.15", 0.151)
    assert r.target("c", ">= 1.0", 1.2) and not r.target("d", "< 0.10", 0.10)
    assert not r.target("e", ">= 1.0", None)
    assert [t["met"] for t in r.targets] == [True, False, True, False, False]
