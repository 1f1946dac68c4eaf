"""Route targets chosen by bench score: ``{select: {metric: tools.score, fits: true}}``.

Pure: the registry's scores, which models fit the board (the supervisor's memory planner decides
that, the caller passes it in) and their file sizes go in; a model and the reason come out.

Among the candidates the best value wins; a candidate whose 95% interval overlaps the best one's
is a tie (the bench cannot tell them apart), broken by speed (``latency.e2e_ms``, lower first),
then by the smaller file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from zoe_edge.registry import Registry, Score, SelectRule

SPEED_METRIC = "latency.e2e_ms"
# metrics where less is better; every other one (accuracies, scores, tokens/s) is better higher
_LOWER_SUFFIXES = ("_ms", "hallucination_rate", "abstention_rate", "parse_failures", "wrong_decisions")
_LOWER_NAMES = ("invented_functions", "false_calls")


def lower_is_better(metric: str) -> bool:
    name = metric.partition(".")[2]
    return name.endswith(_LOWER_SUFFIXES) or name.removeprefix("free_") in _LOWER_NAMES


@dataclass(frozen=True)
class Selection:
    model: str | None  # None: no candidate has the score (or none fits)
    reason: str


def _fmt(score: Score) -> str:
    if score.low is not None and score.high is not None:
        return f"{score.value:g} [{score.low:g}, {score.high:g}]"
    return f"{score.value:g}"


def _overlap(a: Score, b: Score) -> bool:
    if None in (a.low, a.high, b.low, b.high):
        return a.value == b.value
    assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
    return a.low <= b.high and b.low <= a.high


def select_model(
    registry: Registry,
    rule: SelectRule,
    fits: Mapping[str, bool] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> Selection:
    """The model ``rule`` picks and why. ``fits``: model -> fits the current profile (None: not checked)."""
    names = list(rule.among) if rule.among else list(registry.models)
    skipped: list[str] = []
    scored: list[tuple[str, Score]] = []
    for name in names:
        if rule.fits and fits is not None and not fits.get(name, False):
            skipped.append(f"{name} does not fit")
            continue
        score = registry.models[name].score(rule.metric)
        if score is None:
            skipped.append(f"{name} has no {rule.metric}")
            continue
        scored.append((name, score))
    tail = f" ({'; '.join(skipped)})" if skipped else ""
    if not scored:
        return Selection(None, f"select {rule.metric}: no candidate{tail}")
    sign = -1.0 if lower_is_better(rule.metric) else 1.0
    best_name, best = max(scored, key=lambda item: sign * item[1].value)
    tied = [(n, s) for n, s in scored if _overlap(s, best)]

    def speed(name: str) -> float:
        s = registry.models[name].score(SPEED_METRIC)
        return s.value if s is not None else math.inf

    def size(name: str) -> int:
        return (sizes or {}).get(name, 2**62)

    fit_note = "" if not rule.fits else " among models that fit" if fits is not None else " (fit not checked)"
    if len(tied) == 1:
        why = f"best {rule.metric} {_fmt(best)}{fit_note}"
        return Selection(best_name, f"select {rule.metric}: {best_name}, {why}{tail}")
    chosen = min((n for n, _ in tied), key=lambda n: (speed(n), size(n), n))
    others = ", ".join(f"{n} {_fmt(s)}" for n, s in tied if n != chosen)
    by = (
        "faster"
        if len({speed(n) for n, _ in tied}) > 1
        else "smaller"
        if len({size(n) for n, _ in tied}) > 1
        else "name"
    )
    chosen_score = dict(tied)[chosen]
    why = f"{rule.metric} {_fmt(chosen_score)} ties with {others} (intervals overlap); chosen as {by}"
    if by == "faster":
        why += f" ({SPEED_METRIC} {speed(chosen):g})"
    return Selection(chosen, f"select {rule.metric}: {chosen}, {why}{fit_note}{tail}")
