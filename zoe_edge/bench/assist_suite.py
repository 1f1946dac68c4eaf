"""The assist suite: Home Assistant turns through the model and through every route that reaches it."""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

from zoe_edge.bench import ha
from zoe_edge.bench.cases import assist_cases
from zoe_edge.bench.scoring import Estimate
from zoe_edge.bench.suite import GREEDY, Answer, Progress, SuiteResult, _now, ask, run_settings
from zoe_edge.bench.turns import GradedTurn, Reply, assist_summary, grade_turn, run_turn
from zoe_edge.cache.service import ResponseCache
from zoe_edge.canonical import ErrorEvent, GenerationRequest, Message, TextDelta, ToolCall
from zoe_edge.errors import ZoeError
from zoe_edge.registry import Registry
from zoe_edge.routing.dispatch import Dispatcher
from zoe_edge.routing.routes import Target, plan_request
from zoe_edge.service import Gateway, RequestContext
from zoe_edge.supervisor import Supervisor


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def assist_passes(registry: Registry, model: str, quick: bool) -> list[tuple[str, str]]:
    """(score prefix, name Home Assistant sends) for each way the suite runs ``model``.

    ``raw``: the model alone, no turn planner (what the planner is worth). The model's own name:
    through the daemon's dispatcher, as a client naming the model gets it (the planner on, as the
    registry's ``assist`` settings say). Then every route, the ``auto`` router included, whose
    first target is this model for every case (so the pass measures this model); ``--quick`` keeps
    the ``auto`` router only.
    """
    passes = [("raw_", model), ("", model)]
    names = ([registry.auto.name] if registry.auto is not None else []) + ([] if quick else list(registry.routes))
    probes = [
        GenerationRequest(model="x", messages=[Message(role="user", content=c.user)], tools=ha.assist_tools())
        for c in assist_cases(quick)
    ]
    for name in names:
        try:
            firsts = {plan_request(registry, name, req).targets[0] for req in probes}
        except ZoeError:
            continue
        if firsts == {Target(model)}:
            passes.append((f"route_{_slug(name)}_", name))
    return passes


def _reply_of(ans: Answer, note: str | None = None) -> Reply:
    calls = [(c.name, dict(c.arguments)) for c in ans.calls]
    return Reply(ans.text, calls, ans.error, ans.total_s, note)


async def _routed(gateway: Gateway, req: GenerationRequest) -> Reply:
    """One request the way the daemon's fronts serve it: through the gateway (name, route, dispatch)."""
    out = Answer()
    started = time.perf_counter()
    try:
        dispatched = await gateway.generate(RequestContext("bench"), req.model, req)
    except ZoeError as exc:
        out.error = f"{exc.code}: {exc.message}"
        out.total_s = time.perf_counter() - started
        return _reply_of(out)
    note = f"{dispatched.served_by.label}" + (f"; {dispatched.turn}" if dispatched.turn else "")

    def take(event: object) -> None:
        if isinstance(event, TextDelta):
            out.text += event.text
        elif isinstance(event, ToolCall):
            out.calls.append(event)
        elif isinstance(event, ErrorEvent):
            out.error = event.message

    try:
        take(dispatched.first)
        async with contextlib.aclosing(dispatched.events) as events:
            async for event in events:
                take(event)
    except ZoeError as exc:
        out.error = f"{exc.code}: {exc.message}"
    out.total_s = time.perf_counter() - started
    return _reply_of(out, note)


async def assist_suite(sup: Supervisor, model: str, quick: bool, progress: Progress) -> SuiteResult:
    """Home Assistant's loop on the real request shape, graded by what HA would do (``zoe_edge.bench.turns``)."""
    cases = assist_cases(quick)
    house = ha.bench_house()
    initial = ha.initial_states()
    registry = sup.registry
    # no cloud upstreams and no response cache: a pass measures the local model, every time
    gateway = Gateway(registry, sup, Dispatcher(registry, sup, {}), ResponseCache(registry.cache, registry, None))
    passes = assist_passes(registry, model, quick)
    max_tokens = 96 if quick else 160
    scores: dict[str, Estimate] = {}
    rows: list[dict[str, Any]] = []
    total = len(passes) * len(cases)
    done = 0
    for prefix, name in passes:
        if prefix == "raw_":

            async def generate(req: GenerationRequest) -> Reply:
                return _reply_of(await ask(sup, model, req))

        else:

            async def generate(req: GenerationRequest) -> Reply:
                return await _routed(gateway, req)

        graded = []
        for case in cases:
            turn = await run_turn(case.user, house, initial, generate, name, GREEDY, max_tokens)
            grade = grade_turn(case, house, initial, turn)
            graded.append(GradedTurn(case.kind, grade, turn.loop, turn.error is not None, turn.seconds))
            rows.append(
                {
                    "id": case.id,
                    "pass": prefix.rstrip("_") or "model",
                    "sent_as": name,
                    "kind": case.kind,
                    "ok": grade.ok,
                    "detail": grade.detail,
                    "answer": (turn.answer or "")[:200],
                    "calls": [{"name": n, "arguments": a} for n, a in turn.calls],
                    "results": [json_short(r) for r in turn.results],
                    "iterations": turn.iterations,
                    "served": [r.note for r in turn.replies],
                    "loop": turn.loop,
                    "error": turn.error,
                    "turn_ms": round(turn.seconds * 1000, 1),
                }
            )
            done += 1
            progress(model, "assist", done, total)
        for key, est in assist_summary(graded).items():
            scores[prefix + key] = est
    settings = run_settings(sup, model, quick) | {
        "cases": len(cases),
        "passes": {p.rstrip("_") or "model": n for p, n in passes},
        "house_entities": len(house.devices),
        "max_tokens": max_tokens,
        "assist": registry.assist.model_dump(),
    }
    return SuiteResult(model, "assist", scores, settings, _now(), rows)


def json_short(result: dict[str, Any], limit: int = 300) -> str:
    text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + "..."
