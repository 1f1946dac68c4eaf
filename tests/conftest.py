"""Shared fixtures: real model files, a registry pointing at them, and a real daemon on a socket."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from zoe_edge.registry import ensure_model_file, load_registry

REPO = Path(__file__).resolve().parents[1]
# prints "reliability suite: N faults injected, M fuzz cases run, K failures" after every run
# tests.keyed: the "cloud" fixture shared by the key, ledger and security tests
pytest_plugins = ["tests.faults.summary", "tests.keyed"]


def state_dir() -> Path:
    return Path(os.environ.get("ZOE_STATE_DIR") or REPO / ".state")


@pytest.fixture(scope="session")
def model_files() -> dict[str, Path]:
    """The real GGUF files of the default registry (Gemma is assembled on first use)."""
    registry = load_registry(REPO / "models.yaml")
    return {name: ensure_model_file(entry, REPO, state_dir()) for name, entry in registry.models.items()}


@pytest.fixture(scope="session")
def smollm_path(model_files: dict[str, Path]) -> Path:
    return model_files["smollm2-135m"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None = None

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        """Live worker processes (children running zoe_edge.worker)."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        alive = []
        for child in children:
            try:
                if "zoe_edge.worker" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
            except psutil.NoSuchProcess:
                continue
        return alive

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/admin/status", headers=self.headers, timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def worker_pid(self, timeout: float = 10.0) -> int:
        """The pid of the worker holding the loaded model (waits for one to be loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.status()["slot"]["pid"]
            if pid:
                return int(pid)
            time.sleep(0.05)
        raise AssertionError(f"no model loaded after {timeout} s: {self.status()['slot']}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def write_registry(
    tmp: Path, models: dict[str, dict[str, object]], aliases: dict[str, str] | None = None, default: str | None = None
) -> Path:
    path = tmp / "models.yaml"
    data = {"default": default or next(iter(models)), "models": models, "aliases": aliases or {}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def smollm_entry(path: Path, **overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "file": str(path),
        "n_ctx": 2048,
        "n_threads": 2,
        "ttl": "10m",
        "sampling": {"temperature": 0.0},
    }
    entry.update(overrides)
    return entry


def shipped_routes_registry(tmp: Path, smollm_path: Path, **entry: object) -> Path:
    """SmolLM2 behind the shipped ``auto`` rules and route names, every route served by SmolLM2 alone."""
    registry = write_registry(tmp, {"smollm2-135m": smollm_entry(smollm_path, **entry)}, {"zoe-chat": "smollm2-135m"})
    shipped = yaml.safe_load((REPO / "models.yaml").read_text())
    data = yaml.safe_load(registry.read_text())
    data["routes"] = {name: {"targets": ["smollm2-135m"]} for name in shipped["routes"]}
    data["auto"] = shipped["auto"]
    registry.write_text(yaml.safe_dump(data))
    return registry


def start_daemon(
    registry: Path,
    tmp: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    api_key: str | None = None,
) -> Daemon:
    port = free_port()
    log_path = tmp / f"daemon-{port}.log"
    # each daemon its own usage ledger (the shared state dir holds the model files only)
    full_env = {
        **os.environ,
        "ZOE_STATE_DIR": str(state_dir()),
        "ZOE_USAGE_DB": str(tmp / "usage.sqlite3"),
        # prefix snapshots on disk would carry one test's prompts into the next test's fresh worker
        # through the shared state dir; tests/test_prefix_persist.py turns them on in a dir of its own
        "ZOE_PREFIX_PERSIST": "0",
        **(env or {}),
    }
    full_env.pop("ZOE_API_KEY", None)
    if api_key:
        full_env["ZOE_API_KEY"] = api_key
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zoe_edge", "serve", "--config", str(registry), "--port", str(port), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=tmp,
        )
    daemon = Daemon(f"http://127.0.0.1:{port}", proc, log_path, api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{daemon.log()}")
        try:
            r = httpx.get(daemon.url + "/ready", headers=headers, timeout=2)
            if not wait_ready or (r.status_code == 200 and r.json().get("loaded")):
                return daemon
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    daemon.stop()
    raise AssertionError(f"daemon not ready in 60 s:\n{daemon.log()}")


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    """SmolLM2 at the shipped n_ctx behind the shipped routes and ``auto``: what Home Assistant talks to."""
    tmp = tmp_path_factory.mktemp("ha")
    d = start_daemon(shipped_routes_registry(tmp, smollm_path, n_ctx=4096), tmp)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    """A real daemon serving SmolLM2 (greedy by default, so outputs are repeatable)."""
    tmp = tmp_path_factory.mktemp("daemon")
    registry = write_registry(tmp, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp, "--max-body-bytes", "65536")
    yield d
    d.stop()


def copy_truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.write(fin.read(int(src.stat().st_size * fraction)))
    return dst


def copy_file(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


BOARD_KEY = "board-key"


@pytest.fixture(scope="session")
def board(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Daemon]:
    """A daemon on a pretend Orin NX near its thermal limit: a fake ``tegrastats`` on PATH prints the
    throttled fixture every 0.5 s. Has an API key and has served one chat request (shared by the
    telemetry integration test and the dashboard test, so the slow first generation happens once).
    """
    from tests.telemetry.helpers import THROTTLED, start_board_daemon

    d = start_board_daemon(tmp_path_factory.mktemp("board"), smollm_path, THROTTLED, api_key=BOARD_KEY)
    r = httpx.post(
        d.v1 + "/chat/completions",
        headers=d.headers,
        json={"model": "zoe-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    yield d
    d.stop()
