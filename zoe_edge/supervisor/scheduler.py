"""The slot's decisions: who is served next, how long a newcomer would wait, when a background generation
pauses for a voice turn, how long a failure rests.

Pure functions over plain data; :mod:`zoe_edge.supervisor.slot` carries them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zoe_edge.canonical import Priority

# used until a model has been measured on this board
DEFAULT_SERVICE_S = 5.0
DEFAULT_LOAD_S = 5.0
# a request without max_tokens, until the model's answers have been measured
DEFAULT_COMPLETION_TOKENS = 128.0
# what pausing a background generation costs beyond one token: the worker saves its KV cells
SUSPEND_OVERHEAD_S = 0.05


@dataclass(frozen=True)
class Waiting:
    """A queued request as admission knows it (its prompt is not tokenised yet: an estimate)."""

    model: str
    enqueued_at: float
    priority: Priority = Priority.NORMAL
    prompt_tokens: int = 0
    max_tokens: int | None = None


@dataclass(frozen=True)
class Running:
    """The request that holds the slot."""

    model: str
    priority: Priority
    started_at: float  # when it was granted the slot
    prompt_tokens: int = 0
    max_tokens: int | None = None
    # streaming, on a worker whose plan leaves room for its state: an interactive newcomer pauses it
    suspendable: bool = False


@dataclass(frozen=True)
class Speed:
    """What this board measured for one model; ``None`` until measured."""

    prompt_s_per_token: float | None = None  # per prompt token evaluated (not taken from the KV cache)
    decode_s_per_token: float | None = None
    completion_tokens: float | None = None  # typical answer length, for requests without max_tokens
    cached_share: float = 0.0  # typical share of a prompt found in the KV cache
    load_s: float | None = None
    prompt_overhead_s: float = 0.0  # what any prompt costs before its tokens do


@dataclass(frozen=True)
class Prediction:
    wait_s: float
    reason: str
    contended: bool = False  # something was ahead (a running request, a queue, a load): a real prediction


@dataclass(frozen=True)
class Choice:
    index: int
    swap: bool
    reason: str


def effective_rank(w: Waiting, now: float, starvation_s: float) -> int:
    """0 is served first; a request that waited past the starvation bound goes before every priority."""
    return -1 if now - w.enqueued_at >= starvation_s else w.priority.rank


def choose_next(
    queue: Sequence[Waiting],
    loaded: str | None,
    loaded_since: float,
    now: float,
    min_residency: float,
    starvation_s: float = math.inf,
) -> Choice | None:
    """The next request to serve.

    The highest priority goes first; a request that has waited ``starvation_s`` goes before all
    priorities, which bounds how long background work waits behind a stream of voice turns. Among
    equals, requests for the loaded model go first while it is inside its minimum residency, so that
    alternating traffic A, B, A, B is served in batches instead of swapping every time; past the
    residency the oldest goes first, which bounds how long any model's clients can starve.
    """
    if not queue:
        return None
    ranks = [effective_rank(w, now, starvation_s) for w in queue]
    top = min(ranks)
    candidates = [i for i, r in enumerate(ranks) if r == top]
    # the reason names priorities only where they decided something
    if top < 0:
        why = " (waited past the starvation bound)"
    elif len(candidates) < len(queue):
        why = f" ({queue[candidates[0]].priority.value} first)"
    else:
        why = ""
    oldest = min(candidates, key=lambda i: queue[i].enqueued_at)
    if loaded is None or queue[oldest].model == loaded:
        return Choice(oldest, queue[oldest].model != loaded, f"oldest request{why}")
    same = [i for i in candidates if queue[i].model == loaded]
    resident_for = now - loaded_since
    if same and resident_for < min_residency:
        first = min(same, key=lambda i: queue[i].enqueued_at)
        return Choice(
            first, False, f"{loaded!r} stays: resident {resident_for:.1f} s < minimum {min_residency:.0f} s{why}"
        )
    swap_why = "no request for the loaded model" if not same else f"residency of {loaded!r} is over"
    return Choice(oldest, True, f"swap to {queue[oldest].model!r}: {swap_why}{why}")


def service_s(job: Waiting | Running, speed: Speed | None) -> float:
    """How long serving ``job`` takes: its prompt, then its token budget, at the measured speeds."""
    if speed is None or speed.decode_s_per_token is None:
        return DEFAULT_SERVICE_S
    tokens = job.max_tokens if job.max_tokens is not None else speed.completion_tokens or DEFAULT_COMPLETION_TOKENS
    prompt = speed.prompt_overhead_s + job.prompt_tokens * (1.0 - speed.cached_share) * (
        speed.prompt_s_per_token or 0.0
    )
    return prompt + tokens * speed.decode_s_per_token


def served_before(w: Waiting, newcomer: Priority, now: float, starvation_s: float) -> bool:
    """Whether a queued request goes before a newcomer of priority ``newcomer`` (FIFO among equals)."""
    return effective_rank(w, now, starvation_s) <= newcomer.rank


def predict_wait(
    target: str,
    priority: Priority,
    *,
    queue: Sequence[Waiting],
    running: Running | None,
    loaded: str | None,
    speeds: Mapping[str, Speed],
    now: float,
    starvation_s: float = math.inf,
    suspended: bool = False,
) -> Prediction:
    """Seconds until a new request would start, if it joined the queue now, and how that adds up.

    From what is known: the running request's elapsed time against its prompt and remaining token
    budget at the measured speeds (or, for an interactive newcomer and a suspendable background
    generation, the cost of pausing it), each request that would go first with its own prompt and
    budget, and each model that has to be loaded on the way, once. Lower priorities are not counted:
    they wait, unless they starve, and then they are. The clock checks the prediction: a request
    still queued at its deadline leaves (see :meth:`zoe_edge.supervisor.queueing.SlotQueue.await_grant`).
    """
    parts: list[str] = []
    wait = 0.0
    if running is not None:
        speed = speeds.get(running.model)
        if running.suspendable and priority is Priority.INTERACTIVE and running.priority is Priority.BACKGROUND:
            step = speed.decode_s_per_token if speed and speed.decode_s_per_token else 0.0
            pause = step + SUSPEND_OVERHEAD_S
            parts.append(f"suspend the background generation {pause:.2f} s")
            wait += pause
        elif speed is None or speed.decode_s_per_token is None:
            wait += DEFAULT_SERVICE_S / 2
            parts.append(f"running request (unmeasured) {DEFAULT_SERVICE_S / 2:.1f} s")
        else:
            left = max(0.0, service_s(running, speed) - (now - running.started_at))
            wait += left
            parts.append(f"running request {left:.2f} s left")
    ahead = [w for w in queue if served_before(w, priority, now, starvation_s)]
    if ahead:
        queued = sum(service_s(w, speeds.get(w.model)) for w in ahead)
        wait += queued
        parts.append(f"{len(ahead)} queued ahead {queued:.2f} s")
    needs_load = {w.model for w in ahead} | {target}
    # the loaded model costs no load only if nothing for another model is served before it; a
    # suspended generation pins the loaded model
    if suspended or not (target == loaded and any(w.model != loaded for w in ahead)):
        needs_load.discard(loaded or "")
    for model in sorted(needs_load):
        speed = speeds.get(model)
        load = speed.load_s if speed is not None and speed.load_s is not None else DEFAULT_LOAD_S
        wait += load
        parts.append(f"load {model!r} {load:.1f} s")
    return Prediction(wait, " + ".join(parts) if parts else "the slot is free", bool(parts))


def should_suspend(running: Running | None, queue: Sequence[Waiting], loaded: str | None) -> str | None:
    """Why the running generation should pause now for a waiting interactive request, or ``None``."""
    if running is None or not running.suspendable or running.priority is not Priority.BACKGROUND:
        return None
    waiting = [w for w in queue if w.priority is Priority.INTERACTIVE and w.model == loaded]
    if not waiting:
        return None
    return f"{len(waiting)} interactive request(s) for {loaded!r} wait behind a background generation"


def next_while_suspended(
    queue: Sequence[Waiting], loaded: str | None, paused_since: float, now: float, starvation_s: float
) -> tuple[int | None, str]:
    """While a background generation is suspended: the interactive request to serve (index), or
    ``None`` to resume it; only interactive requests for the loaded model may run meanwhile."""
    if now - paused_since >= starvation_s:
        return None, f"the suspended generation waited {now - paused_since:.0f} s, the starvation bound"
    waiting = [i for i, w in enumerate(queue) if w.priority is Priority.INTERACTIVE and w.model == loaded]
    if not waiting:
        return None, "no interactive request waits"
    first = min(waiting, key=lambda i: queue[i].enqueued_at)
    return first, "interactive request while a background generation is suspended"


def backoff_s(failures: int, base: float = 10.0, cap: float = 300.0) -> float:
    """10 s, 20 s, 40 s ... up to 5 minutes between attempts to load a model that keeps failing."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(failures - 1, 32)))


def ewma(previous: float | None, sample: float, weight: float = 0.3) -> float:
    return sample if previous is None else previous + weight * (sample - previous)


def memory_pressure(available_bytes: int, reserve_bytes: int, idle: bool) -> str | None:
    """Why an idle model should give its memory back now, or ``None``.

    Only an idle model is unloaded: cutting a generation would hurt more than waiting for it.
    """
    if not idle or available_bytes >= reserve_bytes:
        return None
    mib = 1024 * 1024
    return f"memory pressure: {available_bytes // mib} MB available is under the {reserve_bytes // mib} MB reserve"
