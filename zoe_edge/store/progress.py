"""``zoe-edge pull`` on a terminal: a rich progress bar over :func:`pull_model`'s events."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from zoe_edge.registry import Registry
from zoe_edge.store.errors import PullError
from zoe_edge.store.events import SUCCESS, PullProgress, PullResult
from zoe_edge.store.models import pull_model
from zoe_edge.supervisor.planner import Budget


async def pull_with_progress(
    name: str,
    registry: Registry,
    registry_dir: Path,
    state_dir: Path,
    *,
    console: Console,
    budget: Budget | None = None,
    bar: bool = True,
) -> PullResult:
    """Pull ``name``, drawing a bar for the transfer and one line per other step; the result at the end."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    task: TaskID | None = None
    result: PullResult | None = None
    said: set[str] = set()
    # not a terminal (a log, a pipe): rich would redraw nothing anyway, so print the steps as lines
    show_bar = bar and console.is_terminal
    with Progress(*columns, console=console, transient=False, disable=not show_bar) as progress:
        async with contextlib.aclosing(pull_model(name, registry, registry_dir, state_dir, budget=budget)) as events:
            async for event in events:
                if event.total is not None and event.status.startswith("pulling "):
                    if task is None:
                        task = progress.add_task(f"{name}: {event.status}", total=event.total)
                        if not show_bar:
                            console.print(f"{name}: {event.status} ({_size(event)})")
                    progress.update(task, total=event.total, completed=event.completed or 0)
                    continue
                if event.status == SUCCESS:
                    result = event.result
                if event.status not in said:
                    said.add(event.status)
                    console.print(f"{name}: {event.status}")
    if result is None:  # pull_model always ends with a result or raises; a silent end is a bug worth naming
        raise PullError(f"the pull of {name} ended without a result")
    return result


def _size(event: PullProgress) -> str:
    total = event.total or 0
    done = event.completed or 0
    text = f"{total / 2**20:,.1f} MB"
    return f"{text}, resuming at {done / 2**20:,.1f} MB" if 0 < done < total else text
