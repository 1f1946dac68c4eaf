"""What every script in ``bench/`` shares: ``--quick``, ``--json OUT`` and the lines it prints.

A bench prints human-readable lines as it goes (through :meth:`Report.line`) and states each target
with :meth:`Report.target`; with ``--json OUT`` it also writes the contract ``bench/run_all.py``
reads::

    {"bench": name, "title": ..., "command": the exact command, "lines": [...],
     "targets": [{"name", "target", "measured", "unit", "met"}], "data": {...}}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import operator
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run that proves the bench works")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write the results as JSON to OUT")


def command_line(argv: list[str] | None = None) -> str:
    """The command that reproduces this run (``--json OUT`` left out: it only says where to write)."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--json":
            skip = True
            continue
        if a.startswith("--json="):
            continue
        kept.append(a)
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its own path
        script = script.resolve().relative_to(Path(__file__).resolve().parents[1])
    return shlex.join([".venv/bin/python", str(script), *kept])


class Report:
    def __init__(self, bench: str, title: str) -> None:
        self.bench = bench
        self.title = title
        self.lines: list[str] = []
        self.targets: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {}

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def target(self, name: str, target: str, measured: float | None, unit: str = "") -> bool:
        """Record ``measured`` against ``target`` (``"<= 0.15"``); ``None`` measured is a miss."""
        op, _, bound = target.partition(" ")
        met = measured is not None and _OPS[op](measured, float(bound))
        self.targets.append(
            {
                "name": name,
                "target": target,
                "measured": None if measured is None else round(measured, 4),
                "unit": unit,
                "met": met,
            }
        )
        return met

    def verdict(self, met: bool) -> str:
        return "MET" if met else "MISSED"

    def write(self, out: Path | None) -> None:
        if out is None:
            return
        payload = {
            "bench": self.bench,
            "title": self.title,
            "command": command_line(),
            "lines": self.lines,
            "targets": self.targets,
            "data": self.data,
        }
        out.write_text(json.dumps(payload, indent=2))
