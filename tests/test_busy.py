"""Busy is the normal case, end to end: a real daemon, real SmolLM2 through llama.cpp, the openai SDK.

* a route deadline bounds the wait: a request predicted to wait too long goes to the next target at
  once, and one still queued when its deadline passes leaves the queue for it (before any byte);
* an interactive request suspends a background generation between tokens, and the background text
  is byte for byte the uninterrupted run's, with the pause in its usage row;
* a worker killed while a generation is suspended ends that stream with a clean error, and the daemon
  goes on serving.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from bench.workload import TOKENS_PER_ITEM, long_prompt
from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry
from tests.fakes.common import FakeReply
from tests.fakes.openai_fake import OpenAIFake
from tests.fakes.threaded import FakeThread

KEY_ENV = {"ZOE_TEST_CLOUD_KEY": "sk-test-not-a-real-key"}
COUNTING = "Here are the numbers from one to five hundred, in digits and separated by commas: 1, 2, 3, 4, 5,"
CHAT = [{"role": "user", "content": "Say hello to the kitchen."}]
BACKGROUND = {"X-Zoe-Priority": "background"}
INTERACTIVE = {"X-Zoe-Priority": "interactive"}


@pytest.fixture(scope="module")
def cloud() -> Iterator[OpenAIFake]:
    with FakeThread(FakeReply(text="Hello from the cloud.")) as fake:
        yield fake


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path, cloud: OpenAIFake) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("busy")
    # a context long enough for a prompt that takes seconds to read on any machine
    path = write_registry(tmp, {"smol": smollm_entry(smollm_path, n_ctx=8192)})
    data = yaml.safe_load(path.read_text())
    data["providers"] = {"cloud": {"type": "openai", "base_url": cloud.url, "api_key_env": "ZOE_TEST_CLOUD_KEY"}}
    data["routes"] = {"edge": {"targets": ["smol", "cloud:gpt-fake"], "deadline": "1s"}}
    path.write_text(yaml.safe_dump(data))
    d = start_daemon(path, tmp, env=KEY_ENV)
    yield d
    d.stop()


def client(d: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.v1, api_key="unused", max_retries=0, timeout=300)


@dataclass
class Streamed:
    text: str = ""
    completion_tokens: int | None = None
    error: BaseException | None = None
    first_token: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)  # hang up at the next chunk
    done: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0


def complete_in_thread(
    d: Daemon,
    max_tokens: int | None,
    headers: dict[str, str] | None = None,
    prompt: str = COUNTING,
    wait_first_token: bool = True,
) -> Streamed:
    """A streamed completion (counting, unless told) on its own thread (the openai SDK is synchronous here)."""
    out = Streamed()

    def run() -> None:
        try:
            # null, not absent: this endpoint's default is OpenAI's 16 tokens, null is "until the context ends"
            extra: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens else {"extra_body": {"max_tokens": None}}
            stream = client(d).completions.create(
                model="smol",
                prompt=prompt,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers or {},
                **extra,
            )
            for chunk in stream:
                if out.stop.is_set():
                    stream.close()
                    break
                if chunk.usage is not None:
                    out.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.text:
                        out.text += choice.text
                        out.first_token.set()
        except BaseException as exc:
            out.error = exc
        finally:
            out.ended_at = time.monotonic()
            out.first_token.set()
            out.done.set()

    threading.Thread(target=run, daemon=True).start()
    if wait_first_token:
        assert out.first_token.wait(120), "the background generation produced no token"
    return out


def status(d: Daemon) -> dict[str, Any]:
    r = httpx.get(d.url + "/admin/status", timeout=30)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def test_a_known_budget_that_overruns_the_deadline_goes_to_the_cloud_at_once(daemon: Daemon) -> None:
    # one answer measures the model's speed on this machine (unmeasured, a request counts as 5 s)
    client(daemon).completions.create(model="smol", prompt=COUNTING, max_tokens=8, temperature=0)
    assert status(daemon)["models"]["smol"]["decode_ms_per_token"] is not None
    running = complete_in_thread(daemon, 200)
    started = time.monotonic()
    raw = client(daemon).chat.completions.with_raw_response.create(
        model="edge",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=8,
    )
    took = time.monotonic() - started
    answer = raw.parse()
    assert raw.headers["x-zoe-served-by"] == "cloud:gpt-fake"
    assert answer.choices[0].message.content == "Hello from the cloud."
    why = raw.headers["x-zoe-fallback-reason"]
    assert "expected wait" in why and "running request" in why and "s left" in why, why
    # refused by the prediction: no queueing at all, far inside the 1 s deadline
    assert took < 1.0, took
    assert status(daemon)["scheduling"]["prediction"]["refused"] >= 1
    assert running.error is None and not running.done.is_set()  # the local generation goes on, unharmed
    assert running.done.wait(300) and running.completion_tokens == 200


def test_a_request_still_queued_at_its_deadline_leaves_for_the_next_target(daemon: Daemon) -> None:
    # a long prompt the KV cache holds, again and again: admission learns that prompts are mostly
    # cached here. Then an uncached one as long arrives (as after a swap): it is predicted to start
    # answering at once, while its prompt takes seconds. The newcomer is queued on that prediction,
    # and only the clock can take it out.
    usual = long_prompt("Usual", 150)
    for _ in range(6):
        client(daemon).completions.create(model="smol", prompt=usual, max_tokens=2, temperature=0)
    measured = status(daemon)["models"]["smol"]
    assert measured["cached_share"] > 0.8
    # about 2.5 s of prompt at this machine's measured speed (1 ms a token if it has none yet):
    # predicted at a sixth of that or less, it is read in full
    per_token_s = (measured["prompt_ms_per_token"] or 1.0) / 1000
    items = max(50, min(900, int(2.5 / per_token_s / TOKENS_PER_ITEM)))
    running = complete_in_thread(daemon, 4, prompt=long_prompt("Unusual", items), wait_first_token=False)
    try:
        until = time.monotonic() + 60
        while status(daemon)["scheduling"]["serving"] is None:
            assert time.monotonic() < until and not running.done.is_set()
            time.sleep(0.01)
        expired = status(daemon)["scheduling"]["prediction"]["expired"]
        started = time.monotonic()
        r = httpx.post(
            daemon.v1 + "/chat/completions",
            json={"model": "edge", "messages": CHAT, "max_tokens": 8, "stream": True},
            timeout=60,
        )
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert r.headers["x-zoe-served-by"] == "cloud:gpt-fake"
        why = r.headers["x-zoe-fallback-reason"]
        assert "did not become free within the request's 1.0 s deadline" in why, (why, status(daemon)["models"])
        assert "predicted wait" in why
        assert "Hello from the cloud." in "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in r.text.splitlines()
            if line.startswith("data: {") and json.loads(line[6:])["choices"]
        )
        # it left the queue at its deadline, not after the running generation
        assert 1.0 <= took < 2.5, took
        assert not running.done.is_set() and not running.text  # still reading its prompt
        sched = status(daemon)["scheduling"]
        assert sched["prediction"]["expired"] == expired + 1
        metrics = httpx.get(daemon.url + "/metrics", timeout=30).text
        assert "zoe_deadline_expired_total" in metrics and "zoe_queue_depth_by_priority" in metrics
    finally:
        running.stop.set()  # the client hangs up: the daemon cancels the generation at its next token
        assert running.done.wait(60)


def test_an_interactive_turn_suspends_a_background_generation_that_then_goes_on_unchanged(daemon: Daemon) -> None:
    reference = complete_in_thread(daemon, 300, BACKGROUND)
    assert reference.done.wait(300) and reference.error is None and reference.completion_tokens == 300
    alone = client(daemon).chat.completions.create(
        model="smol",
        messages=CHAT,
        max_tokens=16,
        temperature=0,
        extra_headers=INTERACTIVE,  # type: ignore[arg-type]
    )
    before = status(daemon)["scheduling"]["suspension"]
    background = complete_in_thread(daemon, 300, BACKGROUND)
    raw = client(daemon).chat.completions.with_raw_response.create(
        model="smol",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0,
        extra_headers={**INTERACTIVE, "X-Zoe-Deadline": "5"},
    )
    answered_at = time.monotonic()
    turn = raw.parse()
    assert raw.headers["x-zoe-priority"] == "interactive"
    assert turn.choices[0].message.content == alone.choices[0].message.content
    assert not background.done.is_set() or background.ended_at > answered_at  # it did not wait for the background
    assert background.done.wait(300) and background.error is None
    # the background stream paused and went on: the same text, nothing cut, nothing repeated
    assert background.text == reference.text
    assert background.completion_tokens == reference.completion_tokens == 300
    after = status(daemon)["scheduling"]["suspension"]
    assert after["suspensions"] == before["suspensions"] + 1 and after["resumes"] == before["resumes"] + 1
    assert after["last_state_mb"] > 0 and after["refusals"] == before["refusals"]
    # the usage ledger: the background row records its pause, the interactive one its priority
    time.sleep(1.0)  # rows are written after the response
    with sqlite3.connect(daemon.log_path.parent / "usage.sqlite3") as conn:
        rows = conn.execute(
            "SELECT priority, suspensions, paused_ms, completion_tokens FROM usage ORDER BY rowid DESC LIMIT 2"
        ).fetchall()
    by_priority = {row[0]: row for row in rows}
    assert set(by_priority) == {"background", "interactive"}, rows
    _, suspensions, paused_ms, tokens = by_priority["background"]
    assert suspensions == 1 and paused_ms > 0 and tokens == 300
    assert by_priority["interactive"][1] == 0


def test_a_worker_killed_while_a_generation_is_suspended_ends_its_stream_cleanly(daemon: Daemon) -> None:
    background = complete_in_thread(daemon, 400, BACKGROUND)
    turn: dict[str, Any] = {}

    def interactive() -> None:
        try:
            turn["answer"] = client(daemon).completions.create(
                model="smol", prompt=COUNTING, max_tokens=300, temperature=0, extra_headers=INTERACTIVE
            )
        except openai.APIError as exc:
            turn["error"] = exc

    voice = threading.Thread(target=interactive, daemon=True)
    voice.start()
    deadline = time.monotonic() + 60
    while status(daemon)["scheduling"]["suspended"] is None:
        assert time.monotonic() < deadline, "the background generation was never suspended"
        time.sleep(0.02)
    pid = status(daemon)["slot"]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert background.done.wait(30), "the suspended client hangs"
    # the stream had started: it ends with an error the SDK raises (an SSE error frame), not a hang
    assert background.error is not None and "worker" in str(background.error).lower(), background.error
    voice.join(120)
    assert not voice.is_alive()
    # the interactive request had not answered yet: retried on a fresh worker, or a clean error
    assert "answer" in turn or isinstance(turn.get("error"), openai.APIError)
    again = client(daemon).chat.completions.create(model="smol", messages=CHAT, max_tokens=4)  # type: ignore[arg-type]
    assert again.choices[0].message.content
    assert status(daemon)["scheduling"]["suspended"] is None
