"""Fixtures of the fault suite: a daemon with short timeouts, and process/fd inspection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry

SHORT = {"model": "zoe-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def fd_count(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def wait_fds_at_most(pid: int, limit: int, timeout: float = 10.0) -> int:
    """The daemon's fd count, waited on until it is at most ``limit`` (closes are asynchronous)."""
    deadline = time.monotonic() + timeout
    n = fd_count(pid)
    while n > limit and time.monotonic() < deadline:
        time.sleep(0.1)
        n = fd_count(pid)
    return n


def zombies(daemon: Daemon) -> list[int]:
    """Children of the daemon that died and were never reaped."""
    found = []
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def orphans(daemon: Daemon, seen: set[int]) -> list[int]:
    """Workers once started by the daemon that still run but are no longer its children."""
    out = []
    for pid in seen:
        try:
            proc = psutil.Process(pid)
            if proc.ppid() != daemon.proc.pid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def assert_serves(daemon: Daemon, timeout: float = 60.0) -> None:
    r = httpx.post(daemon.v1 + "/chat/completions", json=SHORT, timeout=timeout)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.fixture(scope="module")
def fault_daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    """A daemon serving SmolLM2 with a 64 KiB body limit, short keepalive and body timeouts."""
    tmp = tmp_path_factory.mktemp("faults")
    registry = write_registry(tmp, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(
        registry, tmp, "--max-body-bytes", "65536", "--keepalive-timeout", "3", "--body-timeout", "3"
    )
    yield d
    d.stop()
