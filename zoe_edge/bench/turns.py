"""Home Assistant's tool loop over the bench house, and the grade of the turn it ends with.

:func:`run_turn` does what the Ollama integration of Home Assistant 2026.11 does with one utterance:
send ``POST /api/chat`` (parsed here by the daemon's own Ollama front into the canonical request),
execute every tool call the answer holds (:func:`zoe_edge.bench.hass.call_tool`), send the results
back, and stop at the first answer without calls or after ``MAX_TOOL_ITERATIONS`` requests. The
model call is injected, so the loop runs the same against a fake in tests and against the serving
path in the bench. :func:`grade_turn` and :func:`assist_summary` are pure.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zoe_edge.api.ollama import ChatRequest
from zoe_edge.bench import ha
from zoe_edge.bench.cases import AssistCase
from zoe_edge.bench.hass import House, State, call_tool, role_of
from zoe_edge.bench.scoring import Estimate, contains_phrase, percentile, proportion
from zoe_edge.canonical import GenerationRequest, Sampling

MAX_TOOL_ITERATIONS = 10  # homeassistant/components/ollama/entity.py
LOOP_ITERATIONS = 3  # more requests than this for one utterance counts as a loop
INTENTS = frozenset({"HassTurnOn", "HassTurnOff", "HassLightSet"})


@dataclass
class Reply:
    """What one request of the loop got back."""

    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    note: str | None = None  # how the request was served (the turn planner's reason, the target)


Generate = Callable[[GenerationRequest], Awaitable[Reply]]


@dataclass
class Turn:
    """One utterance carried through the loop."""

    answer: str | None = None  # the text of the last request, when it made no call
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # the tool result envelopes, in order
    replies: list[Reply] = field(default_factory=list)
    states: dict[str, State] = field(default_factory=dict)  # the house after the turn
    seconds: float = 0.0  # wall clock, utterance to answer

    @property
    def iterations(self) -> int:
        return len(self.replies)

    @property
    def repeated_call(self) -> bool:
        seen = [(name, json.dumps(args, sort_keys=True)) for name, args in self.calls]
        return len(seen) != len(set(seen))

    @property
    def loop(self) -> bool:
        return self.repeated_call or self.iterations > LOOP_ITERATIONS

    @property
    def error(self) -> str | None:
        """The first error of the turn: a failed request, a tool error, or no answer within HA's limit."""
        for reply in self.replies:
            if reply.error:
                return f"request failed: {reply.error}"
        for result in self.results:
            if result.get("error"):
                data = result.get("data") or {}
                return f"tool error: {data.get('error')}: {data.get('error_text', '')}".rstrip(": ")
        if self.answer is None:
            return f"no answer after {MAX_TOOL_ITERATIONS} requests"
        return None


def canonical(body: dict[str, Any], sampling: Sampling, max_tokens: int) -> GenerationRequest:
    """The canonical request the daemon's Ollama front makes of ``body``, with the bench's decoding."""
    req = ChatRequest.model_validate(body).to_canonical()
    return req.model_copy(update={"sampling": sampling, "max_tokens": max_tokens})


async def run_turn(
    utterance: str,
    house: House,
    states: Mapping[str, State],
    generate: Generate,
    model: str,
    sampling: Sampling,
    max_tokens: int,
) -> Turn:
    """One utterance through Home Assistant's loop; ``model`` is the name HA sends (a model or route)."""
    turn = Turn(states=dict(states))
    offered = [t["function"]["name"] for t in ha.assist_tool_defs()]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": ha.system_prompt(house=house)},
        {"role": "user", "content": utterance},
    ]
    started = time.perf_counter()
    for _ in range(MAX_TOOL_ITERATIONS):
        reply = await generate(canonical(ha.chat_body(model, messages), sampling, max_tokens))
        turn.replies.append(reply)
        if reply.error:
            break
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.calls:
            message["tool_calls"] = [{"function": {"name": n, "arguments": a}} for n, a in reply.calls]
        messages.append(message)
        if not reply.calls:
            turn.answer = reply.text
            break
        for name, args in reply.calls:
            outcome = call_tool(house, turn.states, name, args, offered)
            turn.calls.append((name, args))
            turn.results.append(outcome.payload)
            turn.states = outcome.states
            messages.append({"role": "tool", "content": outcome.content})
    turn.seconds = time.perf_counter() - started
    return turn


# --- grading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnGrade:
    ok: bool
    detail: str


def _pct(state: State) -> int | None:
    b = state.attributes.get("brightness")
    return round(b * 100 / 255) if isinstance(b, int | float) and not isinstance(b, bool) else None


def expected_changes(case: AssistCase, house: House, initial: Mapping[str, State]) -> dict[str, tuple[str, int | None]]:
    """Entity id -> (state, brightness %) the command must leave; entities already so are not listed."""
    out = {eid: (state, pct) for eid, state, pct in case.expect}
    if case.expect_area is not None:
        area, domain, state = case.expect_area
        for d in house.devices:
            if d.area == area and d.domain == domain and initial[d.entity_id].state != state:
                out[d.entity_id] = (state, None)
    return out


def changed(before: Mapping[str, State], after: Mapping[str, State]) -> set[str]:
    return {eid for eid in set(before) | set(after) if before.get(eid) != after.get(eid)}


def _said(answer: str, phrases: Sequence[str]) -> list[str]:
    return [p for p in phrases if contains_phrase(answer, p)]


def grade_turn(case: AssistCase, house: House, initial: Mapping[str, State], turn: Turn) -> TurnGrade:
    """Whether the turn did what the case asks (see ``cases/assist.yaml``), and why not."""
    moved = changed(initial, turn.states)
    answer = turn.answer or ""
    false = _said(answer, case.false)
    if case.kind == "command":
        want = expected_changes(case, house, initial)
        if moved != set(want):
            missing, extra = sorted(set(want) - moved), sorted(moved - set(want))
            return TurnGrade(False, f"changed {sorted(moved)}; missing {missing}, unexpected {extra}")
        for eid, (state, pct) in want.items():
            got = turn.states[eid]
            if got.state != state:
                return TurnGrade(False, f"{eid} is {got.state}, not {state}")
            if pct is not None and (_pct(got) is None or abs((_pct(got) or 0) - pct) > 1):
                return TurnGrade(False, f"{eid} at {_pct(got)}%, not {pct}%")
        if false:
            return TurnGrade(False, f"the answer claims {false[0]!r}: {answer[:80]!r}")
        return TurnGrade(True, f"changed {sorted(moved)}" if moved else "nothing changed, as it should")
    if moved:
        return TurnGrade(False, f"a {case.kind} changed {sorted(moved)}")
    if case.kind == "chat":
        intents = [n for n, _ in turn.calls if role_of(n) in INTENTS]
        if intents:
            return TurnGrade(False, f"chit-chat called {intents[0]}")
    if false:
        return TurnGrade(False, f"the answer states {false[0]!r}: {answer[:80]!r}")
    if case.true and not _said(answer, case.true):
        return TurnGrade(False, f"the answer does not state the truth ({case.true[0]!r}): {answer[:80]!r}")
    if case.kind == "chat" and turn.answer is None:
        return TurnGrade(False, "no answer")
    return TurnGrade(True, "true" if case.true else "answered")


@dataclass(frozen=True)
class GradedTurn:
    kind: str
    grade: TurnGrade
    loop: bool
    error: bool
    seconds: float


def _ms(values: Sequence[float], q: float) -> Estimate:
    ms = [v * 1000.0 for v in values]
    return Estimate(round(percentile(ms, q), 1) if ms else math.nan, None, None, len(ms))


def assist_summary(graded: Sequence[GradedTurn]) -> dict[str, Estimate]:
    """Command success, truthful answers, chit-chat, loops, errors (Wilson intervals) and turn latency."""
    out: dict[str, Estimate] = {}
    for kind, name in (("command", "command_success"), ("question", "truthful_answers"), ("chat", "chat_ok")):
        rows = [g for g in graded if g.kind == kind]
        if rows:
            out[name] = proportion(sum(g.grade.ok for g in rows), len(rows))
    n = len(graded)
    out["success"] = proportion(sum(g.grade.ok for g in graded), n)
    out["loops"] = proportion(sum(g.loop for g in graded), n)
    out["errors"] = proportion(sum(g.error for g in graded), n)
    if graded:
        out["turn_ms"] = _ms([g.seconds for g in graded], 50)
        out["turn_p95_ms"] = _ms([g.seconds for g in graded], 95)
    return out
