"""The daemon under systemd's notify protocol, and the unit file as systemd itself reads it."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, smollm_entry, start_daemon, write_registry


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is installed by scripts/setup --dev"
    unit = tmp_path / "zoe-edge.service"
    # verify checks that ExecStart exists: point it at this checkout's venv instead of /opt/zoe-edge
    unit.write_text((REPO / "systemd" / "zoe-edge.service").read_text().replace("/opt/zoe-edge", str(REPO)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = unit.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "StateDirectory=zoe-edge", "EnvironmentFile=-"):
        assert line in text


def test_notify_protocol_ready_watchdog_status_stopping_and_drain(tmp_path: Path, smollm_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    messages: list[tuple[float, dict[str, str]]] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            messages.append((time.monotonic(), fields))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    registry = write_registry(tmp_path, {"smol": smollm_entry(smollm_path)})
    # WATCHDOG_USEC 1 s: the daemon must ping every 0.5 s
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    d = start_daemon(registry, tmp_path, env=env)
    try:
        deadline = time.monotonic() + 20
        while not any(m.get("READY") == "1" for _, m in messages) and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = [m for _, m in messages if m.get("READY") == "1"]
        assert ready and "model smol" in ready[0]["STATUS"], messages
        time.sleep(2.2)
        pings = [t for t, m in messages if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 3, messages
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 0.9  # half the interval, with room for scheduling

        # an in-flight stream completes after SIGTERM
        body = {"model": "smol", "messages": [{"role": "user", "content": "Count to twenty."}],
                "max_tokens": 60, "stream": True, "temperature": 0}
        lines: list[str] = []
        with httpx.stream("POST", d.v1 + "/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and not lines:
                    d.proc.send_signal(signal.SIGTERM)
                lines.append(line)
        assert lines[-1] == "data: [DONE]" or lines[-2:] == ["data: [DONE]", ""], lines[-3:]
        finish = [json.loads(x[6:]) for x in lines if x.startswith("data: {")][-1]
        assert finish["choices"][0]["finish_reason"] in ("stop", "length")
        assert d.proc.wait(30) == 0
        assert any(m.get("STOPPING") == "1" for _, m in messages)
    finally:
        done.set()
        listener.join(2)
        sock.close()
        d.stop()


@pytest.mark.parametrize("address", ["@zoe-edge-test-abstract"])
def test_abstract_namespace_address(address: str) -> None:
    from zoe_edge.sdnotify import Notifier

    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + address[1:])
    server.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_interval == 2.0
        assert notifier.send(READY="1", STATUS="ok")
        assert server.recv(100) == b"READY=1\nSTATUS=ok"
    finally:
        server.close()
    assert not Notifier({}).send(READY="1")  # outside systemd: a no-op
