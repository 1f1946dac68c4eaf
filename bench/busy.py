"""Busy is the normal case: a route deadline that holds, and voice turns that do not wait behind background work.

Part 1 (deadline). One daemon, SmolLM2 as ``m`` behind the route ``edge = [m, cloud:gpt-fake]`` with
``deadline: 1s`` (the cloud is a loopback fake of the OpenAI API). Each trial starts a streamed
512-token generation on ``m`` and, 1 s into it, sends a short streamed chat to ``edge``; the figure is
that second request's time to first byte (the first SSE data line) at the client, and who served it
(``x-zoe-served-by``). Two kinds of trial:

* ``budget known``: the running request says ``max_tokens: 512``; admission predicts its remaining
  time from the measured per-token speed and sends the newcomer to the cloud at once;
* ``cache miss``: admission has seen long prompts found in the KV cache again and again (as Home
  Assistant's are); the running request is a long prompt it has never seen, with ``max_tokens: 4``.
  Predicted short, it reads for seconds: the newcomer is queued on that prediction and the clock
  takes it out at its deadline.

Then the prediction's error: requests sent at random moments into a 512-token generation on the route
``patient = [m]`` (``deadline: 60s``), so they queue and are served locally; ``/admin/status`` reports
actual minus predicted wait.

Part 2 (suspension). The same daemon, a streamed 512-token ``X-Zoe-Priority: background`` completion,
and 1 s into it a short ``X-Zoe-Priority: interactive`` chat: its time to first token against the same
chat's on the idle daemon (same KV history), and the background text compared byte for byte with an
uninterrupted run at temperature 0.

    .venv/bin/python bench/busy.py [--trials 10] [--threads N] [--quick] [--json OUT]

Targets: second request TTFB p95 <= 1.1 s (budget known; cache miss); interactive TTFT busy / idle
<= 1.5 (medians); background text identical to the uninterrupted run, full length, in every trial.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load import KEY_ENV, FakeThread  # noqa: E402
from bench.report import Report, add_arguments  # noqa: E402
from bench.workload import TOKENS_PER_ITEM, long_prompt  # noqa: E402
from tests.conftest import smollm_entry, start_daemon, write_registry  # noqa: E402
from zoe_edge.bench.scoring import percentile  # noqa: E402
from zoe_edge.registry import ensure_model_file, load_registry  # noqa: E402

LONG = 512
# a counting prompt: SmolLM2 at temperature 0 keeps counting well past 512 tokens, so every run is full length
COUNTING = "Here are the numbers from one to five hundred, in digits and separated by commas: 1, 2, 3, 4, 5,"
CHAT = [{"role": "user", "content": "Say hello to the kitchen."}]
TTFB_TARGET = 1.1
RATIO_TARGET = 1.5


@dataclass
class Stream:
    """One streamed answer as the client saw it."""

    status: int
    first_byte_s: float  # first SSE data line after the request was sent
    first_token_s: float | None  # first line carrying text
    text: str
    completion_tokens: int | None
    served_by: str
    priority: str
    fallback_reason: str = ""


def stream(
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    stop: threading.Event | None = None,
    on_token: threading.Event | None = None,
) -> Stream:
    """POST a streamed request; reads to the end, or until ``stop`` is set (then it hangs up)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0}
    started = time.perf_counter()
    first_byte = first_token = None
    text: list[str] = []
    tokens = None
    with client.stream("POST", path, json=body, headers=headers or {}, timeout=600) as r:
        served = r.headers.get("x-zoe-served-by", "")
        priority = r.headers.get("x-zoe-priority", "")
        why = r.headers.get("x-zoe-fallback-reason", "")
        if r.status_code != 200:
            r.read()
            return Stream(r.status_code, time.perf_counter() - started, None, r.text, None, served, priority, why)
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            first_byte = first_byte or time.perf_counter() - started
            if line == "data: [DONE]":
                break
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                piece = choice.get("text") or (choice.get("delta") or {}).get("content")
                if piece:
                    first_token = first_token or time.perf_counter() - started
                    text.append(piece)
                    if on_token is not None:
                        on_token.set()
            if stop is not None and stop.is_set():
                break
    return Stream(200, first_byte or 0.0, first_token, "".join(text), tokens, served, priority, why)


class Background:
    """A long generation on its own thread: started, and running once its first token arrived."""

    def __init__(self, client: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.stop = threading.Event()
        self.running = threading.Event()
        self.result: Stream | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(client, body, headers), daemon=True)

    def _run(self, client: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None) -> None:
        try:
            self.result = stream(client, "/v1/completions", body, headers, self.stop, self.running)
        except BaseException as exc:  # reported by join()
            self.error = exc
            self.running.set()

    def start(self, wait: bool = True) -> Background:
        self._thread.start()
        if wait and not self.running.wait(120):
            raise SystemExit("the background generation produced no token in 120 s")
        return self

    def join(self) -> Stream:
        self._thread.join(600)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def status(client: httpx.Client) -> dict[str, Any]:
    """``/admin/status``: the supervisor's figures at the top level, the registry's and the cache's beside them."""
    r = client.get("/admin/status", timeout=30)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def scheduling(client: httpx.Client) -> dict[str, Any]:
    data = status(client)
    sched = data.get("scheduling")
    if sched is None:
        raise SystemExit(f"/admin/status has no scheduling section: {sorted(data)}")
    return dict(sched)


def first_difference(a: str, b: str) -> int:
    """The first character where ``a`` and ``b`` differ (the shorter one's length when one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50):.3f} s, p95 {percentile(values, 95):.3f} s, max {max(values):.3f} s "
        f"(n={len(values)})"
    )


def wait_until_served(client: httpx.Client, bg: Background) -> None:
    """Until the slot is granted to ``bg`` (it may still be reading its prompt)."""
    until = time.monotonic() + 120
    while scheduling(client)["serving"] is None:
        if time.monotonic() > until or bg.running.is_set():
            raise SystemExit("the long request was not served")
        time.sleep(0.01)


def deadline_trials(client: httpx.Client, trials: int, kind: str, report: Report) -> list[float]:
    ttfb: list[float] = []
    served: dict[str, int] = {}
    reasons: list[str] = []
    usual = long_prompt("Usual", 150)
    for trial in range(trials):
        if kind == "known":
            bg = Background(client, {"model": "m", "prompt": COUNTING, "max_tokens": LONG}).start()
            time.sleep(1.0)
        else:
            for _ in range(3):  # prompts here are found in the KV cache: so admission has seen
                stream(client, "/v1/completions", {"model": "m", "prompt": usual, "max_tokens": 2})
            per_token = (status(client)["models"]["m"]["prompt_ms_per_token"] or 1.0) / 1000
            items = max(50, min(900, int(2.5 / per_token / TOKENS_PER_ITEM)))
            prompt = long_prompt(f"Unusual{trial}", items)
            bg = Background(client, {"model": "m", "prompt": prompt, "max_tokens": 4})
            bg.start(wait=False)
            wait_until_served(client, bg)
        second = stream(client, "/v1/chat/completions", {"model": "edge", "messages": CHAT, "max_tokens": 16})
        bg.stop.set()
        bg.join()
        if second.status != 200:
            raise SystemExit(f"the second request failed with {second.status}: {second.text[:300]}")
        ttfb.append(second.first_byte_s)
        served[second.served_by] = served.get(second.served_by, 0) + 1
        if second.fallback_reason:
            reasons.append(second.fallback_reason)
    what = "budget known (max_tokens 512)" if kind == "known" else "cache miss (a long prompt predicted cached)"
    report.line(f"deadline 1 s, {what}: second request TTFB {summary(ttfb)}; served by {served}")
    for why in sorted(set(reasons))[:3]:
        report.line(f"  fallback reason: {why[:300]}")
    report.data[f"deadline_{kind.replace(' ', '_')}"] = {
        "ttfb_s": [round(x, 4) for x in ttfb],
        "served_by": served,
        "reasons": reasons,
    }
    return ttfb


def prediction_trials(client: httpx.Client, trials: int, rng: random.Random, report: Report) -> dict[str, Any]:
    before = scheduling(client)["prediction"]["samples"]
    for _ in range(trials):
        bg = Background(client, {"model": "m", "prompt": COUNTING, "max_tokens": LONG // 4}).start()
        time.sleep(rng.uniform(0.1, 1.0))
        second = stream(client, "/v1/chat/completions", {"model": "patient", "messages": CHAT, "max_tokens": 16})
        bg.join()
        if second.status != 200 or second.served_by != "local:m":
            raise SystemExit(f"the patient request was not served locally: {second.status} {second.served_by}")
    prediction = scheduling(client)["prediction"]
    report.line(
        f"prediction error (actual - predicted wait) over the {prediction['recent']} requests of this run that "
        f"found the slot taken ({prediction['samples'] - before} in this phase): "
        f"median {prediction['error_p50_s']} s, |error| p50 {prediction['abs_error_p50_s']} s, "
        f"p95 {prediction['abs_error_p95_s']} s, max {prediction['abs_error_max_s']} s; "
        f"waited longer than predicted: {prediction['waited_longer_than_predicted']} of {prediction['recent']}"
    )
    report.data["prediction"] = prediction
    return dict(prediction)


def suspension_trials(client: httpx.Client, trials: int, report: Report) -> tuple[float, bool]:
    bg_body = {"model": "m", "prompt": COUNTING, "max_tokens": LONG}
    voice = {"model": "m", "messages": CHAT, "max_tokens": 16}
    background = {"X-Zoe-Priority": "background"}
    interactive = {"X-Zoe-Priority": "interactive"}
    reference = Background(client, bg_body, background).start().join()
    idle: list[float] = []
    busy: list[float] = []
    identical = reference.completion_tokens == LONG
    for _ in range(trials):
        # idle: after the same background text, so the KV history is the same as in the busy case
        alone = stream(client, "/v1/chat/completions", voice, interactive)
        assert alone.first_token_s is not None, alone
        idle.append(alone.first_token_s)
        bg = Background(client, bg_body, background).start()
        time.sleep(1.0)
        turn = stream(client, "/v1/chat/completions", voice, interactive)
        assert turn.first_token_s is not None, turn
        busy.append(turn.first_token_s)
        if turn.text != alone.text:
            report.line(f"  interactive text differs busy vs idle: {turn.text!r} vs {alone.text!r}")
        paused = bg.join()
        same = paused.text == reference.text and paused.completion_tokens == LONG
        identical = identical and same
        if not same:
            report.line(
                f"  background text differs: {paused.completion_tokens} tokens, first difference at "
                f"{first_difference(paused.text, reference.text)}"
            )
    sched = scheduling(client)
    suspension = sched["suspension"]
    ratio = statistics.median(busy) / statistics.median(idle)
    report.line(
        f"interactive TTFT during a 512-token background stream: {summary(busy)}; idle {summary(idle)}; "
        f"ratio of medians {ratio:.2f}"
    )
    report.line(
        f"suspensions {suspension['suspensions']}, resumes {suspension['resumes']}, refusals "
        f"{suspension['refusals']}; last state {suspension['last_state_mb']} MB saved in "
        f"{suspension['last_save_ms']} ms (ask-to-paused {suspension['last_ack_ms']} ms); save+restore "
        f"{suspension['cost_ms_total']} ms in all, paused {suspension['paused_ms_total']} ms in all"
    )
    verdict = f"identical, {LONG} tokens, in {trials} of {trials} trials" if identical else "DIFFERENT in some trial"
    report.line(f"background text vs the uninterrupted run: {verdict}")
    report.data["suspension"] = {
        "busy_ttft_s": [round(x, 4) for x in busy],
        "idle_ttft_s": [round(x, 4) for x in idle],
        "ratio": round(ratio, 3),
        "identical": identical,
        "stats": suspension,
    }
    return ratio, identical


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed", type=int, default=7)
    add_arguments(parser)
    args = parser.parse_args()
    trials = 3 if args.quick else args.trials
    report = Report("busy", "Busy: a 1 s route deadline that holds, and voice turns that do not wait")

    state = Path(os.environ.setdefault("ZOE_STATE_DIR", str(REPO / ".state")))
    registry = load_registry(REPO / "models.yaml")
    path = ensure_model_file(registry.models["smollm2-135m"], REPO, state)
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp_s, FakeThread() as fake:
        tmp = Path(tmp_s)
        # a context long enough for a prompt that takes seconds to read
        reg = write_registry(tmp, {"m": smollm_entry(path, n_threads=args.threads, n_ctx=8192)})
        data = yaml.safe_load(reg.read_text())
        data["providers"] = {
            "cloud": {"type": "openai", "base_url": fake.url, "api_key_env": "ZOE_BENCH_CLOUD_KEY", "retries": 1}
        }
        data["routes"] = {
            "edge": {"targets": ["m", "cloud:gpt-fake"], "deadline": "1s"},
            "patient": {"targets": ["m"], "deadline": "60s"},
        }
        reg.write_text(yaml.safe_dump(data))
        daemon = start_daemon(reg, tmp, env=KEY_ENV)
        try:
            with httpx.Client(base_url=daemon.url) as client:
                # measured speeds first, as a board that has served for a while has them
                for _ in range(3):
                    stream(client, "/v1/completions", {"model": "m", "prompt": COUNTING, "max_tokens": 32})
                    stream(client, "/v1/chat/completions", {"model": "m", "messages": CHAT, "max_tokens": 16})
                report.line(
                    f"SmolLM2-135M, {args.threads} threads, n_ctx 8192; {trials} trials per case; "
                    f"cloud: loopback fake of the OpenAI API"
                )
                known = deadline_trials(client, trials, "known", report)
                missed = deadline_trials(client, trials, "cache miss", report)
                prediction_trials(client, trials, rng, report)
                ratio, identical = suspension_trials(client, trials, report)
        finally:
            daemon.stop()

    met = [
        report.target("TTFB p95, deadline 1 s, budget known", f"<= {TTFB_TARGET}", percentile(known, 95), "s"),
        report.target("TTFB p95, deadline 1 s, cache miss", f"<= {TTFB_TARGET}", percentile(missed, 95), "s"),
        report.target("interactive TTFT busy / idle (medians)", f"<= {RATIO_TARGET}", ratio, "ratio"),
        report.target("background text identical and full length", ">= 1", 1.0 if identical else 0.0, "all trials"),
    ]
    report.line("targets: " + ", ".join(report.verdict(m) for m in met))
    report.write(args.json)
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
