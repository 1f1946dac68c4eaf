"""``zoe-edge bench``: run the suites with a progress bar per model and suite, then write and report.

Ctrl-C stops the run; the (model, suite) results already finished are still summarised, written
and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from dataclasses import asdict
from typing import Any

from zoe_edge.bench.runner import SUITES, bench_settings, run_bench
from zoe_edge.bench.suite import SuiteResult
from zoe_edge.config import Settings
from zoe_edge.errors import RegistryError, ZoeError
from zoe_edge.registry import Registry


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        print("error: zoe-edge bench needs the bench extra: pip install 'zoe-edge[bench]'", file=sys.stderr)
        return 2
    models = _split(args.models) or list(registry.models)
    suites = _split(args.suites)
    unknown = [m for m in models if registry.lookup(m) is None]
    bad = [s for s in suites if s not in SUITES]
    if unknown or bad or not suites:
        if unknown:
            print(f"error: unknown models {unknown}; the registry has {list(registry.models)}", file=sys.stderr)
        if bad or not suites:
            print(f"error: --suites takes a comma-separated list of {', '.join(SUITES)}", file=sys.stderr)
        return 2
    models = [registry.lookup(m) or m for m in models]
    command = "zoe-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    console = Console(stderr=True)
    results: list[SuiteResult] = []
    interrupted = False
    with Progress(
        TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        tasks = {(m, s): bar.add_task(f"{m} {s}", total=None) for m in models for s in suites}

        def progress(model: str, suite: str, done: int, total: int) -> None:
            bar.update(tasks[(model, suite)], completed=done, total=total)
            # a log (systemd, a redirect) has no live bars: a line at every tenth of the way instead
            if not console.is_terminal and (done == total or done * 10 // total > (done - 1) * 10 // total):
                console.log(f"{model} {suite}: {done}/{total}" + (" done" if done == total else ""))

        try:
            asyncio.run(
                run_bench(
                    registry,
                    settings.registry_path.resolve().parent,
                    bench_settings(settings),
                    models,
                    suites,
                    args.quick,
                    results,
                    progress,
                )
            )
        except KeyboardInterrupt:
            interrupted = True
        except (ZoeError, RuntimeError) as exc:
            console.print(f"[red]error:[/] {exc.message if isinstance(exc, ZoeError) else exc}")
            if not results:
                return 1
            interrupted = True
    if interrupted:
        console.print(f"interrupted: keeping the {len(results)} finished (model, suite) results")
    if not results:
        return 130 if interrupted else 1
    from zoe_edge.bench.report import text_table, write_report

    print(text_table(results))
    if args.json is not None:
        payload: list[dict[str, Any]] = [
            {**asdict(r), "scores": {k: v.as_dict() for k, v in r.scores.items()}} for r in results
        ]
        args.json.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    if args.write:
        from zoe_edge.bench.writeback import write_scores

        try:
            write_scores(settings.registry_path, results)
        except RegistryError as exc:
            print(f"error: scores not written: {exc}", file=sys.stderr)
            return 1
        print(f"scores written to {settings.registry_path}")
    if args.report is not None:
        try:
            png = write_report(args.report, results, command)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"report: {args.report} (plot: {png})")
    return 130 if interrupted else 0
