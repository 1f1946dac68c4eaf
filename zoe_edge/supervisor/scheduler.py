"""The slot's decisions: who is served next, how long a newcomer would wait, how long a failure rests.

Pure functions over plain data; :mod:`zoe_edge.supervisor.slot` carries them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# used until a model has been measured on this board
DEFAULT_SERVICE_S = 5.0
DEFAULT_LOAD_S = 5.0


@dataclass(frozen=True)
class Waiting:
    model: str
    enqueued_at: float


@dataclass(frozen=True)
class Choice:
    index: int
    swap: bool
    reason: str


def choose_next(
    queue: Sequence[Waiting], loaded: str | None, loaded_since: float, now: float, min_residency: float
) -> Choice | None:
    """The next request to serve.

    Requests for the loaded model go first while it is inside its minimum residency, so that
    alternating traffic A, B, A, B is served in batches instead of swapping every time. Past the
    residency the oldest request goes first, which bounds how long any model's clients can starve.
    """
    if not queue:
        return None
    oldest = min(range(len(queue)), key=lambda i: queue[i].enqueued_at)
    if loaded is None or queue[oldest].model == loaded:
        return Choice(oldest, queue[oldest].model != loaded, "oldest request")
    same = [i for i, w in enumerate(queue) if w.model == loaded]
    resident_for = now - loaded_since
    if same and resident_for < min_residency:
        first = min(same, key=lambda i: queue[i].enqueued_at)
        return Choice(first, False, f"{loaded!r} stays: resident {resident_for:.1f} s < minimum {min_residency:.0f} s")
    why = "no request for the loaded model" if not same else f"residency of {loaded!r} is over"
    return Choice(oldest, True, f"swap to {queue[oldest].model!r}: {why}")


def expected_wait(
    queue: Sequence[Waiting],
    *,
    busy_with: str | None,
    loaded: str | None,
    target: str,
    service_s: Mapping[str, float],
    load_s: Mapping[str, float],
) -> float:
    """Seconds until a new request for ``target`` would start, if it joined the queue now.

    Everything already queued is counted ahead of it (true under FIFO, pessimistic under
    batching), the in-flight request is half done on average, and each model that has to be
    loaded on the way costs its measured load time once.
    """
    wait = service_s.get(busy_with, DEFAULT_SERVICE_S) / 2 if busy_with else 0.0
    wait += sum(service_s.get(w.model, DEFAULT_SERVICE_S) for w in queue)
    needs_load = {w.model for w in queue} | {target}
    # the loaded model costs no load only if nothing for another model is served before it
    if not (target == loaded and any(w.model != loaded for w in queue)):
        needs_load.discard(loaded or "")
    wait += sum(load_s.get(m, DEFAULT_LOAD_S) for m in needs_load)
    return wait


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
