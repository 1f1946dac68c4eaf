"""The slot's pure decisions: who goes next, how long a newcomer waits, when a generation pauses, how long a
failure rests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from zoe_edge.canonical import Finish, GenerationRequest, Message, Priority, Timings, Usage
from zoe_edge.supervisor.records import LineFit, ModelStats, Rate
from zoe_edge.supervisor.scheduler import (
    DEFAULT_LOAD_S,
    DEFAULT_SERVICE_S,
    SUSPEND_OVERHEAD_S,
    Choice,
    Running,
    Speed,
    Waiting,
    backoff_s,
    choose_next,
    ewma,
    next_while_suspended,
    predict_wait,
    should_suspend,
)
from zoe_edge.supervisor.speeds import TOKENS_PER_CHAR, learn, prompt_chars, prompt_tokens

W = Waiting

# --- choose_next -------------------------------------------------------------------------------


def test_empty_queue_chooses_nothing() -> None:
    assert choose_next([], "a", 0.0, 100.0, 10.0) is None
    assert choose_next([], None, 0.0, 100.0, 10.0) is None


def test_nothing_loaded_serves_the_oldest() -> None:
    queue = [W("b", 5.0), W("a", 3.0), W("c", 4.0)]
    choice = choose_next(queue, None, 0.0, 10.0, 10.0)
    assert choice == Choice(1, True, "oldest request")


def test_oldest_for_the_loaded_model_needs_no_swap() -> None:
    queue = [W("b", 5.0), W("a", 3.0)]
    choice = choose_next(queue, "a", 0.0, 100.0, 10.0)
    assert choice is not None
    assert (choice.index, choice.swap) == (1, False)


def test_loaded_model_keeps_priority_inside_min_residency() -> None:
    # 'a' loaded at t=100; at t=105 an older 'b' request (t=90) waits, and two 'a' requests
    queue = [W("b", 90.0), W("a", 102.0), W("a", 101.0)]
    choice = choose_next(queue, "a", 100.0, 105.0, 10.0)
    assert choice is not None
    assert choice.index == 2  # the oldest of the 'a' requests, not the first in the list
    assert choice.swap is False
    assert "resident" in choice.reason and "5.0 s < minimum 10 s" in choice.reason
    assert choice.reason.startswith("'a' stays")


def test_after_min_residency_the_oldest_wins_with_a_swap() -> None:
    queue = [W("b", 90.0), W("a", 102.0), W("a", 101.0)]
    choice = choose_next(queue, "a", 100.0, 111.0, 10.0)
    assert choice is not None
    assert (choice.index, choice.swap) == (0, True)
    assert choice.reason == "swap to 'b': residency of 'a' is over"


def test_residency_ends_exactly_at_the_minimum() -> None:
    queue = [W("b", 90.0), W("a", 101.0)]
    just_before = choose_next(queue, "a", 100.0, 109.999, 10.0)
    at_limit = choose_next(queue, "a", 100.0, 110.0, 10.0)
    assert just_before is not None and at_limit is not None
    assert (just_before.index, just_before.swap) == (1, False)
    assert (at_limit.index, at_limit.swap) == (0, True)


def test_residency_does_not_hold_an_idle_model() -> None:
    # inside the residency but nobody wants 'a': swap at once
    choice = choose_next([W("b", 101.0), W("c", 100.5)], "a", 100.0, 101.0, 10.0)
    assert choice is not None
    assert (choice.index, choice.swap) == (1, True)
    assert choice.reason == "swap to 'c': no request for the loaded model"


# --- A, B, A, B traffic over time ----------------------------------------------------------------

SERVICE_S = 1.0
LOAD_S = 2.0
MIN_RESIDENCY_S = 10.0

Chooser = Callable[[Sequence[Waiting], "str | None", float, float, float], "Choice | None"]


@dataclass(frozen=True)
class Served:
    model: str
    arrived: float
    picked: float  # when choose_next picked it (a load, if any, follows)
    started: float  # service start, after the load
    ended: float


def simulate(arrivals: list[tuple[float, str]], choose: Chooser) -> tuple[list[Served], int]:
    """One slot with a fake clock: pick, load if another model is loaded, serve; never preempt.

    Like the real slot, residency is counted from the end of the load.
    """
    pending = sorted(arrivals)
    queue: list[tuple[float, str]] = []
    now, loaded, loaded_since = 0.0, None, 0.0
    served: list[Served] = []
    swaps = 0
    while pending or queue:
        while pending and pending[0][0] <= now:
            queue.append(pending.pop(0))
        if not queue:
            now = pending[0][0]  # idle until the next arrival
            continue
        choice = choose([W(m, t) for t, m in queue], loaded, loaded_since, now, MIN_RESIDENCY_S)
        assert choice is not None
        arrived, model = queue.pop(choice.index)
        picked = now
        assert choice.swap == (model != loaded)
        if model != loaded:
            swaps += loaded is not None
            now += LOAD_S
            loaded, loaded_since = model, now
        served.append(Served(model, arrived, picked, now, now + SERVICE_S))
        now += SERVICE_S
    return served, swaps


def fifo(queue: Sequence[Waiting], loaded: str | None, since: float, now: float, res: float) -> Choice:
    """Reference policy: plain first come, first served."""
    i = min(range(len(queue)), key=lambda i: queue[i].enqueued_at)
    return Choice(i, queue[i].model != loaded, "fifo")


def sticky(queue: Sequence[Waiting], loaded: str | None, since: float, now: float, res: float) -> Choice:
    """Reference policy: the loaded model always first (batches perfectly, starves the others)."""
    same = [i for i, w in enumerate(queue) if w.model == loaded]
    return Choice(same[0], False, "sticky") if same else fifo(queue, loaded, since, now, res)


def alternating(n: int, gap: float) -> list[tuple[float, str]]:
    return [(i * gap, "ab"[i % 2]) for i in range(n)]


def overtaken_service(served: list[Served], r: Served) -> float:
    """Service time of requests that arrived after ``r`` but were picked before it."""
    return sum(SERVICE_S for s in served if s.arrived > r.arrived and s.picked < r.picked)


def service_meanwhile(served: list[Served], r: Served) -> float:
    """Service time spent on other requests while ``r`` waited (loads excluded)."""
    return sum(
        max(0.0, min(s.ended, r.picked) - max(s.started, r.arrived))
        for s in served
        if s is not r and s.ended > r.arrived
    )


def test_alternating_traffic_is_batched() -> None:
    # one request a second, A, B, A, B ...: the slot just keeps up if it never swaps
    arrivals = alternating(120, 1.0)
    alternations = sum(arrivals[i][1] != arrivals[i - 1][1] for i in range(1, len(arrivals)))
    assert alternations == 119
    served, swaps = simulate(arrivals, choose_next)
    assert len(served) == 120 and sorted(s.arrived for s in served) == [t for t, _ in arrivals]
    assert swaps <= alternations // 5, f"{swaps} swaps for {alternations} alternations"
    # the harness does count thrash: first come, first served swaps on every alternation
    fifo_served, fifo_swaps = simulate(arrivals, fifo)
    assert fifo_swaps == alternations
    # and batching finishes the same work far sooner than thrashing does (148 s against 360 s)
    assert served[-1].ended < fifo_served[-1].ended / 2


def test_alternating_traffic_starves_nobody() -> None:
    served, _ = simulate(alternating(120, 1.0), choose_next)
    for r in served:
        waited = r.picked - r.arrived
        assert waited <= MIN_RESIDENCY_S + service_meanwhile(served, r), r
    # plain FIFO has no residency to blame, but its swaps make the same bound fail
    fifo_served, _ = simulate(alternating(120, 1.0), fifo)
    assert any(r.picked - r.arrived > MIN_RESIDENCY_S + service_meanwhile(fifo_served, r) for r in fifo_served)


@pytest.mark.parametrize("gap", [0.25, 0.5, 1.0, 1.5, 3.0])
def test_overtaking_is_bounded_by_the_residency(gap: float) -> None:
    # whatever the load, later requests jump ahead of a waiting one only during one residency
    # window: at most min_residency of service, plus the request picked just before it expired
    served, _ = simulate(alternating(120, gap), choose_next)
    worst = max(overtaken_service(served, r) for r in served)
    assert worst <= MIN_RESIDENCY_S + SERVICE_S


def test_overtaking_bound_catches_a_starving_policy() -> None:
    # the same bound fails for a policy that always prefers the loaded model
    served, _ = simulate(alternating(120, 0.5), sticky)
    assert max(overtaken_service(served, r) for r in served) > MIN_RESIDENCY_S + SERVICE_S


def test_light_alternating_traffic_swaps_every_time() -> None:
    # a request every 3 s is one load + one service: nothing is ever queued, so nothing to batch
    served, swaps = simulate(alternating(10, 3.0), choose_next)
    assert swaps == 9
    assert all(r.picked == r.arrived for r in served)


# --- predict_wait ------------------------------------------------------------------------------

I, N, B = Priority.INTERACTIVE, Priority.NORMAL, Priority.BACKGROUND  # noqa: E741
# 1 ms per prompt token, 10 ms per generated token, nothing cached; loads as given per test
FAST = Speed(prompt_s_per_token=0.001, decode_s_per_token=0.01, completion_tokens=50.0)


def wait(
    queue: Sequence[Waiting] = (),
    *,
    running: Running | None = None,
    loaded: str | None = "a",
    target: str = "a",
    priority: Priority = N,
    speeds: dict[str, Speed] | None = None,
    now: float = 100.0,
    starvation_s: float = 30.0,
) -> float:
    return predict_wait(
        target,
        priority,
        queue=queue,
        running=running,
        loaded=loaded,
        speeds=speeds if speeds is not None else {"a": FAST},
        now=now,
        starvation_s=starvation_s,
    ).wait_s


def test_wait_idle_and_empty() -> None:
    assert wait(loaded=None, speeds={"a": Speed(load_s=7.0)}) == 7.0  # its own load only
    assert wait(loaded="b", speeds={"a": Speed(load_s=7.0), "b": Speed(load_s=3.0)}) == 7.0
    assert wait(loaded="a") == 0.0


def test_wait_for_the_running_request_is_its_budget_left() -> None:
    # 200 prompt tokens (0.2 s) + 512 tokens (5.12 s), running for 1 s: 4.32 s left
    running = Running("a", N, started_at=99.0, prompt_tokens=200, max_tokens=512)
    assert wait(running=running) == pytest.approx(4.32)
    # without max_tokens the model's typical answer (50 tokens, 0.5 s) stands in; an overrun is 0, not negative
    assert wait(running=Running("a", N, started_at=99.9, max_tokens=None)) == pytest.approx(0.4)
    assert wait(running=Running("a", N, started_at=50.0, max_tokens=None)) == 0.0


def test_wait_for_an_unmeasured_running_request_is_half_the_default() -> None:
    assert wait(running=Running("x", N, 99.0), loaded="x", target="x", speeds={}) == DEFAULT_SERVICE_S / 2


def test_wait_counts_each_queued_request_by_its_prompt_and_budget() -> None:
    queue = [W("a", 1.0, N, prompt_tokens=100, max_tokens=10), W("a", 2.0, N, prompt_tokens=0, max_tokens=None)]
    # 0.1 + 0.1, then 0 + 50 x 0.01
    assert wait(queue) == pytest.approx(0.7)


def test_wait_skips_lower_priorities_unless_they_starve() -> None:
    queue = [W("a", 90.0, B, max_tokens=100), W("a", 97.0, N, max_tokens=100)]
    assert wait(queue, priority=I) == 0.0  # both go after an interactive request
    assert wait(queue, priority=N) == pytest.approx(1.0)  # the normal one is ahead (FIFO among equals)
    assert wait(queue, priority=B) == pytest.approx(2.0)
    # the background one has waited 10 s; with a 5 s starvation bound it goes before everyone
    assert wait(queue, priority=I, starvation_s=5.0) == pytest.approx(1.0)


def test_an_interactive_newcomer_waits_only_for_the_pause_of_a_background_generation() -> None:
    running = Running("a", B, started_at=99.0, max_tokens=512, suspendable=True)
    assert wait(running=running, priority=I) == pytest.approx(0.01 + SUSPEND_OVERHEAD_S)
    # a normal newcomer does not suspend it, nor does an interactive one when it cannot be suspended
    assert wait(running=running, priority=N) == pytest.approx(4.12)
    not_suspendable = Running("a", B, started_at=99.0, max_tokens=512, suspendable=False)
    assert wait(running=not_suspendable, priority=I) == pytest.approx(4.12)


def test_wait_counts_each_model_to_load_once() -> None:
    queue = [W("b", 1.0, max_tokens=10), W("c", 2.0, max_tokens=10), W("b", 3.0, max_tokens=10)]
    speeds = {"b": Speed(decode_s_per_token=0.1, load_s=6.0), "c": Speed(decode_s_per_token=0.2, load_s=8.0)}
    # services 1 + 2 + 1; loads b 6 + c 8 (b once, though it is also the target)
    assert wait(queue, loaded="a", target="b", speeds=speeds) == pytest.approx(18.0)


def test_wait_uses_defaults_for_unmeasured_models() -> None:
    assert (DEFAULT_SERVICE_S, DEFAULT_LOAD_S) == (5.0, 5.0)
    # in flight x: 5 / 2; queued y: 5; loads y 5 + z 5 (x is loaded)
    got = wait([W("y", 1.0)], running=Running("x", N, 99.0), loaded="x", target="z", speeds={})
    assert got == 17.5


def test_wait_counts_reloading_the_target_after_other_models() -> None:
    # 'a' is loaded and past its residency; one 'b' request waits (t=1). A new 'a' request (t=20):
    # choose_next serves the older 'b' first (swap), then 'a' must be loaded again.
    queue = [W("b", 1.0, max_tokens=30)]
    first = choose_next([*queue, W("a", 20.0)], "a", 0.0, 20.0, 10.0)
    assert first is not None and first.index == 0 and first.swap
    speeds = {"a": Speed(load_s=7.0), "b": Speed(decode_s_per_token=0.1, load_s=6.0)}
    # load b 6 + serve b 3 + load a 7 = 16
    assert wait(queue, loaded="a", target="a", speeds=speeds) == pytest.approx(16.0)


def test_the_prediction_says_how_it_adds_up() -> None:
    running = Running("a", N, started_at=99.0, max_tokens=512)
    got = predict_wait(
        "b",
        N,
        queue=[W("a", 1.0, max_tokens=10)],
        running=running,
        loaded="a",
        speeds={"a": FAST, "b": Speed(load_s=2.0)},
        now=100.0,
    )
    assert got.reason == "running request 4.12 s left + 1 queued ahead 0.10 s + load 'b' 2.0 s"


# --- priorities, starvation, suspension ----------------------------------------------------------


def test_higher_priority_goes_first_whatever_its_age() -> None:
    queue = [W("a", 1.0, B), W("a", 2.0, N), W("a", 3.0, I)]
    choice = choose_next(queue, "a", 0.0, 10.0, 10.0, starvation_s=30.0)
    assert choice is not None and choice.index == 2 and "interactive first" in choice.reason
    assert choose_next(queue[:2], "a", 0.0, 10.0, 10.0, starvation_s=30.0) == Choice(
        1, False, "oldest request (normal first)"
    )


def test_priority_beats_residency() -> None:
    # 'a' is resident and a normal request for it waits, but an interactive one for 'b' goes first
    queue = [W("a", 1.0, N), W("b", 2.0, I)]
    choice = choose_next(queue, "a", 9.0, 10.0, 10.0, starvation_s=30.0)
    assert choice is not None and choice.index == 1 and choice.swap


def test_a_starving_request_goes_before_every_priority() -> None:
    queue = [W("a", 1.0, B), W("a", 50.0, I)]
    choice = choose_next(queue, "a", 0.0, 40.0, 10.0, starvation_s=30.0)  # waited 39 s > 30 s
    assert choice is not None and choice.index == 0 and "starvation" in choice.reason
    fresh = choose_next(queue, "a", 0.0, 20.0, 10.0, starvation_s=30.0)  # waited 19 s
    assert fresh is not None and fresh.index == 1


def test_the_starvation_bound_holds_under_a_stream_of_voice_turns() -> None:
    # one interactive turn of 2 s arrives every 2 s forever; a background job queued at t=0 is served
    # by the first pick after it has waited the bound, never later
    bound = 15.0
    queue = [W("a", 0.0, B)]
    now, served_at = 0.0, None
    while served_at is None and now < 100:
        queue.append(W("a", now, I))
        choice = choose_next(queue, "a", 0.0, now, 0.0, starvation_s=bound)
        assert choice is not None
        picked = queue.pop(choice.index)
        if picked.priority is B:
            served_at = now
        now += 2.0
    assert served_at is not None and bound <= served_at <= bound + 2.0


def test_should_suspend_only_a_suspendable_background_generation_for_interactive_requests() -> None:
    background = Running("a", B, 0.0, suspendable=True)
    assert should_suspend(background, [W("a", 1.0, I)], "a") is not None
    assert should_suspend(background, [W("a", 1.0, N)], "a") is None
    assert should_suspend(background, [W("b", 1.0, I)], "a") is None  # another model: no swap under a pause
    assert should_suspend(Running("a", B, 0.0, suspendable=False), [W("a", 1.0, I)], "a") is None
    assert should_suspend(Running("a", N, 0.0, suspendable=True), [W("a", 1.0, I)], "a") is None
    assert should_suspend(None, [W("a", 1.0, I)], "a") is None


def test_while_suspended_only_interactive_requests_run_then_it_resumes() -> None:
    queue = [W("a", 1.0, N), W("a", 3.0, I), W("a", 2.0, I), W("b", 0.5, I)]
    assert next_while_suspended(queue, "a", 10.0, 11.0, 30.0)[0] == 2  # the oldest interactive one for 'a'
    index, why = next_while_suspended(queue[:1], "a", 10.0, 11.0, 30.0)
    assert index is None and why == "no interactive request waits"
    index, why = next_while_suspended(queue, "a", 10.0, 45.0, 30.0)  # paused 35 s: past the bound
    assert index is None and "starvation" in why


# --- backoff and ewma --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(-1, 0.0), (0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 160.0), (6, 300.0), (7, 300.0), (50, 300.0)],
)
def test_backoff_doubles_up_to_five_minutes(failures: int, seconds: float) -> None:
    got = backoff_s(failures)
    assert got == seconds and isinstance(got, float)


def test_backoff_custom_base_and_cap() -> None:
    assert [backoff_s(n, base=1.0, cap=5.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_backoff_survives_a_model_that_fails_for_days() -> None:
    # after 6 failures each attempt is 300 s apart: 1025 failures is about 3.5 days of a broken file
    assert backoff_s(1025) == 300.0


def test_ewma_first_sample_and_smoothing() -> None:
    assert ewma(None, 8.0) == 8.0
    assert ewma(10.0, 20.0) == pytest.approx(13.0)  # 10 + 0.3 x (20 - 10)
    assert ewma(10.0, 0.0) == pytest.approx(7.0)  # 10 + 0.3 x (0 - 10)
    assert ewma(10.0, 20.0, weight=0.5) == pytest.approx(15.0)
    assert ewma(10.0, 10.0) == 10.0


def test_ewma_converges_to_a_steady_sample() -> None:
    value: float | None = None
    for _ in range(40):
        value = ewma(value, 2.0 if value is None else 4.0)
    # 2 + 2 x (1 - 0.7**39) ~ 4 - 1.8e-6
    assert value == pytest.approx(4.0, abs=1e-5)


def test_memory_pressure_unloads_only_an_idle_model() -> None:
    from zoe_edge.supervisor.scheduler import memory_pressure

    mib = 2**20
    assert memory_pressure(900 * mib, 1000 * mib, idle=True) == (
        "memory pressure: 900 MB available is under the 1000 MB reserve"
    )
    assert memory_pressure(900 * mib, 1000 * mib, idle=False) is None  # never cut a generation
    assert memory_pressure(1000 * mib, 1000 * mib, idle=True) is None


# --- measured speeds ---------------------------------------------------------------------------


def test_a_prompt_fit_separates_the_overhead_from_the_per_token_cost() -> None:
    fit = LineFit()
    assert fit.fit() is None and fit.seconds(100) is None
    # 20 ms of set-up plus 1 ms per token: a 30-token prompt (50 ms) must not make 2000 tokens cost 3.3 s
    for tokens in (30, 2000, 40, 1500, 30):
        fit.add(tokens, 0.020 + 0.001 * tokens)
    overhead, per_token = fit.fit() or (0.0, 0.0)
    assert overhead == pytest.approx(0.020, abs=1e-6) and per_token == pytest.approx(0.001, rel=1e-6)
    assert fit.seconds(2000) == pytest.approx(2.02)


def test_a_prompt_fit_of_alike_lengths_is_a_ratio_through_zero() -> None:
    fit = LineFit()
    for tokens, seconds in ((100, 0.2), (104, 0.21), (98, 0.19)):
        fit.add(tokens, seconds)
    overhead, per_token = fit.fit() or (1.0, 0.0)
    assert overhead == 0.0 and per_token == pytest.approx(0.002, rel=0.03)


def test_a_decayed_rate_weighs_long_samples_by_their_length_and_forgets_old_ones() -> None:
    rate = Rate()
    assert rate.value is None
    rate.add(1.0, 100)  # 10 ms per token over 100 tokens
    rate.add(0.1, 1)  # one slow token barely moves it
    assert rate.value == pytest.approx((1.0 * 0.9 + 0.1) / (100 * 0.9 + 1))
    for _ in range(60):
        rate.add(0.5, 100)  # the board got faster: 5 ms per token
    assert rate.value == pytest.approx(0.005, rel=0.01)


def test_learning_leaves_out_a_cold_prompt_and_a_cancelled_answer_length() -> None:
    stats = ModelStats()
    chat = GenerationRequest(model="m", messages=[Message(role="user", content="Say hello to the kitchen.")])
    chars = prompt_chars(chat)
    assert chars == len("Say hello to the kitchen.")
    cold = Finish("stop", Usage(40, 9), Timings(prompt_ms=1400.0, predicted_ms=80.0))
    speed = learn(stats, chars, cold, warm=False)
    # the first prompt of a worker pays llama.cpp's set-up: no prompt speed from it; decoding counts
    assert speed.prompt_s_per_token is None and speed.decode_s_per_token == pytest.approx(0.01)
    warm = Finish("stop", Usage(40, 9), Timings(prompt_ms=80.0, predicted_ms=80.0))
    speed = learn(stats, chars, warm, warm=True)
    assert speed.prompt_s_per_token == pytest.approx(0.002) and speed.completion_tokens == 9.0
    learn(stats, chars, Finish("cancelled", Usage(40, 300), Timings(80.0, 3000.0)), warm=True)
    assert stats.completion_tokens == 9.0  # a client that hung up says nothing about answer lengths
    # the template's tokens count: 40 tokens for 25 characters
    assert prompt_tokens(stats, 50) == int(50 * 40 / 25)
    assert prompt_tokens(None, 100) == int(100 * TOKENS_PER_CHAR)
