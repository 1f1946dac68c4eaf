"""The reliability suite's tally, printed at the end of every pytest run.

Fault tests call ``injected()`` each time they inject a fault and fuzz tests ``fuzzed()`` per generated
case; failures are counted from the test reports themselves, so the line cannot claim zero failures for a
run where a reliability test failed.
"""

from __future__ import annotations

import pytest

# tests whose failures count as the suite's: everything under tests/faults plus the older fault tests
SUITE_FILES = (
    "tests/faults/",
    "tests/test_worker_lifecycle.py",
    "tests/test_bad_input.py",
    "tests/providers/test_reliability.py",
    "tests/test_systemd.py",
)

_tally = {"faults": 0, "fuzz": 0, "failures": 0, "tests": 0}


def injected(n: int = 1) -> None:
    _tally["faults"] += n


def fuzzed(n: int = 1) -> None:
    _tally["fuzz"] += n


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.nodeid.startswith(SUITE_FILES):
        return
    if report.when == "call":
        _tally["tests"] += 1
    if report.failed:
        _tally["failures"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _tally["tests"] and not _tally["failures"]:
        return
    terminalreporter.write_sep(
        "=",
        f"reliability suite: {_tally['faults']} faults injected, {_tally['fuzz']} fuzz cases run, "
        f"{_tally['tests']} tests, {_tally['failures']} failures",
        red=bool(_tally["failures"]),
        green=not _tally["failures"],
    )
