"""The model slot under stress: clients that leave, a worker that dies, a daemon that must stay up."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry

LONG = {
    "model": "zoe-chat",
    "messages": [{"role": "user", "content": "Write a very long essay about the history of bread."}],
    "max_tokens": 1500,
    "temperature": 0.8,
    "stream": True,
}
SHORT = {"model": "zoe-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture()
def fresh_daemon(tmp_path: Path, smollm_path: Path) -> Daemon:
    registry = write_registry(tmp_path, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp_path)
    yield d  # type: ignore[misc]
    d.stop()


def wait_for_workers(daemon: Daemon, n: int, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p.pid for p in daemon.workers()]
        if len(pids) == n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"expected {n} worker processes, found {len(daemon.workers())}")


def read_some_chunks(daemon: Daemon, n: int) -> None:
    with httpx.stream("POST", daemon.v1 + "/chat/completions", json=LONG, timeout=30) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen += 1
                if seen >= n:
                    return  # leaving the context manager closes the connection mid-stream


def test_disconnect_mid_stream_frees_the_model_at_once(fresh_daemon: Daemon) -> None:
    pid = fresh_daemon.worker_pid()
    read_some_chunks(fresh_daemon, 3)
    started = time.monotonic()
    r = httpx.post(fresh_daemon.v1 + "/chat/completions", json=SHORT, timeout=30)
    waited = time.monotonic() - started
    assert r.status_code == 200
    # 1500 tokens at ~100 tok/s would hold the slot for ~15 s; cancellation must free it within a second
    assert waited < 1.0, f"next request waited {waited:.2f} s"
    assert fresh_daemon.worker_pid() == pid  # cancelled, not killed
    assert "client went away" in fresh_daemon.log()


def test_disconnect_during_non_stream_request_frees_the_model(fresh_daemon: Daemon) -> None:
    body = {**LONG, "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fresh_daemon.v1 + "/chat/completions", json=body, timeout=0.5)
    started = time.monotonic()
    r = httpx.post(fresh_daemon.v1 + "/chat/completions", json=SHORT, timeout=30)
    assert r.status_code == 200
    assert time.monotonic() - started < 1.5


def test_worker_sigkill_mid_stream(fresh_daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=fresh_daemon.v1, api_key="x", max_retries=0, timeout=60)
    pid = fresh_daemon.worker_pid()
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        stream = client.chat.completions.create(**LONG)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
            if len(received) == 5:
                os.kill(pid, signal.SIGKILL)
    assert len(received) >= 5
    assert "SIGKILL" in str(err.value.message)
    assert fresh_daemon.proc.poll() is None  # the daemon stays up
    resp = client.chat.completions.create(**SHORT)  # type: ignore[call-overload]
    assert resp.choices[0].message.content is not None
    new_pid = fresh_daemon.worker_pid()
    assert new_pid != pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_worker_sigkill_before_first_token_is_retried_on_a_fresh_worker(fresh_daemon: Daemon) -> None:
    pid = fresh_daemon.worker_pid()
    # a prompt long enough that prompt processing is still running when the kill lands
    body = {**SHORT, "messages": [{"role": "user", "content": "lorem ipsum " * 300}], "stream": True}
    killer = threading.Timer(0.15, os.kill, (pid, signal.SIGKILL))
    killer.start()
    r = httpx.post(fresh_daemon.v1 + "/chat/completions", json=body, timeout=60)
    killer.join()
    # the client never learns: nothing had been sent, so the request ran again on a fresh worker
    assert r.status_code == 200, r.text
    assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text, r.text[-500:]
    assert fresh_daemon.worker_pid() != pid
    assert fresh_daemon.log().count("retrying the request once") == 1


def test_a_worker_that_dies_again_on_the_retry_is_a_clean_503(tmp_path: Path, smollm_path: Path) -> None:
    registry = write_registry(tmp_path, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp_path, "--crash-loop-limit", "1000")
    try:
        d.worker_pid()
        stop = threading.Event()

        def kill_every_worker() -> None:
            while not stop.is_set():
                for proc in d.workers():
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
                time.sleep(0.02)

        killer = threading.Thread(target=kill_every_worker)
        killer.start()
        try:
            r = httpx.post(d.v1 + "/chat/completions", json=SHORT, timeout=120)
        finally:
            stop.set()
            killer.join()
        # one retry, not a loop: the second death is the client's answer
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "worker_crashed", r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert d.log().count("retrying the request once") == 1
        r = httpx.post(d.v1 + "/chat/completions", json=SHORT, timeout=120)
        assert r.status_code == 200, r.text
    finally:
        d.stop()


def test_daemon_shutdown_leaves_no_worker(tmp_path: Path, smollm_path: Path) -> None:
    registry = write_registry(tmp_path, {"m": smollm_entry(smollm_path)})
    d = start_daemon(registry, tmp_path)
    d.worker_pid()
    pids = wait_for_workers(d, 2)  # the loaded one and the pre-spawned spare
    d.stop()
    assert d.proc.returncode == 0
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids)


def test_daemon_sigkill_takes_the_worker_with_it(tmp_path: Path, smollm_path: Path) -> None:
    registry = write_registry(tmp_path, {"m": smollm_entry(smollm_path)})
    d = start_daemon(registry, tmp_path)
    d.worker_pid()
    pids = wait_for_workers(d, 2)
    d.proc.kill()
    d.proc.wait(5)
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids), "an orphaned worker would keep a model in memory"


def test_api_key_required_when_configured(tmp_path: Path, smollm_path: Path) -> None:
    registry = write_registry(tmp_path, {"m": smollm_entry(smollm_path)}, {"zoe-chat": "m"})
    d = start_daemon(registry, tmp_path, api_key="s3cret-key-value")
    try:
        assert httpx.get(d.url + "/health").status_code == 200  # liveness stays open
        r = httpx.post(d.v1 + "/chat/completions", json=SHORT)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(d.v1 + "/chat/completions", json=SHORT, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        client = openai.OpenAI(base_url=d.v1, api_key="s3cret-key-value", max_retries=0)
        assert client.chat.completions.create(**SHORT).choices  # type: ignore[call-overload]
        assert "s3cret-key-value" not in d.log()
    finally:
        d.stop()


def test_disconnect_during_prompt_processing_aborts_it(fresh_daemon: Daemon) -> None:
    """A client that gives up while a long prompt is being read frees the model mid-prompt."""
    pid = fresh_daemon.worker_pid()
    body = {**SHORT, "messages": [{"role": "user", "content": "lorem ipsum dolor " * 220}], "stream": True}
    # how long this prompt takes when nobody interrupts it
    started = time.monotonic()
    assert (
        httpx.post(fresh_daemon.v1 + "/chat/completions", json={**body, "stream": False}, timeout=60).status_code == 200
    )
    full = time.monotonic() - started
    changed = {**body, "messages": [{"role": "user", "content": "dolor sit amet " * 220}]}  # no cached prefix
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fresh_daemon.v1 + "/chat/completions", json=changed, timeout=0.2)
    started = time.monotonic()
    r = httpx.post(fresh_daemon.v1 + "/chat/completions", json=SHORT, timeout=60)
    waited = time.monotonic() - started
    assert r.status_code == 200
    print(f"uninterrupted prompt {full:.2f} s, next request after an abort waited {waited:.2f} s")
    assert waited < max(0.5, full / 2), f"waited {waited:.2f} s; the uninterrupted prompt takes {full:.2f} s"
    assert fresh_daemon.worker_pid() == pid  # aborted, not killed
    assert "generation cancelled by the daemon after 0 tokens" in fresh_daemon.log()


def test_worker_process_exits_cleanly_after_a_load(smollm_path: Path) -> None:
    """llama.cpp is freed while its logging and abort callbacks still exist: no crash on the way out."""
    import subprocess
    import sys

    script = (
        "from zoe_edge.worker.engine import Engine, LlamaLog\n"
        "from zoe_edge.worker.protocol import LoadSpec\n"
        f"Engine(LoadSpec(name='m', path={str(smollm_path)!r}, n_ctx=256, n_batch=64, n_threads=1, n_gpu_layers=0),"
        " LlamaLog())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 0, (result.returncode, result.stderr[-500:])
