"""Pull a registry model by name: its file from its ``url``, then whether it fits the board.

This is what ``zoe-edge pull`` and Ollama's ``/api/pull`` call; both render the same events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path

import aiohttp

from zoe_edge.gguf_info import GGUFError, read_gguf
from zoe_edge.registry import ModelEntry, Registry, ensure_model_file, model_path
from zoe_edge.store.errors import NotPullable, PullError
from zoe_edge.store.events import PULLING_MANIFEST, SUCCESS, PullProgress, PullResult, pulling
from zoe_edge.store.pull import pull_file
from zoe_edge.supervisor.planner import Budget, Plan, plan_entry


def resolve_model(registry: Registry, name: str) -> str:
    """The registry model ``name`` (a model, an alias, either with Ollama's ``:latest``) stands for."""
    model = registry.lookup(name) or registry.lookup(name.removesuffix(":latest"))
    if model is None:
        raise NotPullable(
            f"{name!r} is not a model in the registry: add it to models.yaml with its url and sha256 "
            f"(models: {', '.join(registry.models)})"
        )
    return model


def missing_downloads(registry: Registry, registry_dir: Path, state_dir: Path) -> list[str]:
    """Models with a ``url`` whose file is not there yet, in registry order."""
    missing = []
    for name, entry in registry.models.items():
        if entry.url is not None and not model_path(entry, registry_dir, state_dir).is_file():
            missing.append(name)
    return missing


async def pull_model(
    name: str,
    registry: Registry,
    registry_dir: Path,
    state_dir: Path,
    *,
    budget: Budget | None = None,
    session: aiohttp.ClientSession | None = None,
    retries: int = 2,
) -> AsyncGenerator[PullProgress, None]:
    """Make model ``name``'s file present and verified; the ``success`` event's result says whether it fits.

    A model without ``url`` has nothing to download: present (or assembled from its packages),
    it succeeds at once, as Ollama answers a pull of a model it has. ``budget``: the board to plan
    for (the daemon passes its own, with what the loaded model would give back); default: the
    registry's ``device`` profile as detected now. Raises :class:`~zoe_edge.store.errors.PullError`.
    """
    model = resolve_model(registry, name)
    entry = registry.models[model]
    try:
        path = model_path(entry, registry_dir, state_dir)
    except (OSError, ValueError) as exc:
        raise NotPullable(f"model {model!r}: {exc}") from None
    if entry.url is None or entry.sha256 is None:
        yield PullProgress(PULLING_MANIFEST)
        result = await _local(model, entry, path, registry_dir, state_dir)
        yield PullProgress(pulling(model), total=result.size, completed=result.size)
        plan, fit = await fit_report(model, entry, path, registry, budget)
        yield PullProgress(SUCCESS, result=replace(result, plan=plan, fit=fit))
        return
    async for event in pull_file(entry.url, path, entry.sha256, session=session, retries=retries):
        if event.status == SUCCESS and event.result is not None:
            plan, fit = await fit_report(model, entry, path, registry, budget)
            event = replace(event, result=replace(event.result, plan=plan, fit=fit))
        yield event


async def _local(model: str, entry: ModelEntry, path: Path, registry_dir: Path, state_dir: Path) -> PullResult:
    if entry.file.startswith("assemble:"):
        try:
            path = await asyncio.to_thread(ensure_model_file, entry, registry_dir, state_dir)
        except Exception as exc:  # the assembler is another package's code: any failure is a failed pull
            raise PullError(f"model {model!r}: assembling {entry.file} failed: {exc}") from exc
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except OSError:
        raise NotPullable(
            f"model {model!r} has no url to download from and its file {path} is missing: "
            "add url and sha256 to its entry, or put the file there"
        ) from None
    return PullResult(path, size, "", already_present=True)


async def fit_report(
    name: str, entry: ModelEntry, path: Path, registry: Registry, budget: Budget | None
) -> tuple[Plan | None, str]:
    """The supervisor's memory plan for the pulled file, and one line saying whether it fits."""
    try:
        info = await asyncio.to_thread(read_gguf, path)
    except GGUFError as exc:
        return None, f"cannot plan: {exc}"
    if budget is None:
        budget = await asyncio.to_thread(_detected_budget, registry)
    plan = plan_entry(name, entry, info, budget)
    return plan, plan.reason


def _detected_budget(registry: Registry) -> Budget:
    from zoe_edge.supervisor.device import detect

    return Budget.from_settings(detect(registry.device.profile), registry.device)
