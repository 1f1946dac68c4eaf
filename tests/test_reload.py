"""Reloading models.yaml on a live daemon: SIGHUP (through the unit's own ExecReload line) and /admin/reload."""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import REPO, Daemon, smollm_entry, start_daemon, write_registry

LONG = {"role": "user", "content": "Tell me a long story about a lighthouse."}


def _chat(d: Daemon, model: str, max_tokens: int = 3, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [LONG], "max_tokens": max_tokens, "stream": stream}
    return httpx.post(d.v1 + "/chat/completions", json=body, timeout=120)


def _edit(path: Path, change: dict[str, object]) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(change)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _exec_reload(pid: int) -> None:
    """Run the unit file's ExecReload= command as systemd would, with $MAINPID set to the daemon's pid."""
    unit = (REPO / "systemd" / "zoe-edge.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecReload="))
    argv = [pid_arg.replace("$MAINPID", str(pid)) for pid_arg in shlex.split(line.removeprefix("ExecReload="))]
    subprocess.run(argv, check=True)


def _wait_for(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_reload_adds_an_alias_while_a_stream_runs_and_refuses_a_bad_edit(tmp_path: Path, smollm_path: Path) -> None:
    models = {"smollm2-135m": smollm_entry(smollm_path, n_ctx=512)}
    registry = write_registry(tmp_path, models, {"zoe-chat": "smollm2-135m"})
    d = start_daemon(registry, tmp_path)
    try:
        before = httpx.get(d.url + "/admin/status", timeout=10).json()["config"]
        assert before["digest"].startswith("sha256:") and before["reloads"] == 0
        # a stream that runs across the reload must end whole
        chunks: list[str] = []

        def stream() -> None:
            body = {"model": "zoe-chat", "messages": [LONG], "max_tokens": 256, "stream": True}
            with httpx.stream("POST", d.v1 + "/chat/completions", json=body, timeout=120) as r:
                chunks.extend(line for line in r.iter_lines() if line)

        reader = threading.Thread(target=stream)
        reader.start()
        _wait_for(lambda: len(chunks) > 0)
        assert reader.is_alive(), "the stream should still run when the reload comes"
        assert _chat(d, "kitchen").status_code == 404
        _edit(registry, {"aliases": {"zoe-chat": "smollm2-135m", "kitchen": "smollm2-135m"}})
        _exec_reload(d.proc.pid)
        _wait_for(lambda: _chat(d, "kitchen").status_code == 200)
        reader.join(120)
        assert chunks[-1] == "data: [DONE]"
        after = httpx.get(d.url + "/admin/status", timeout=10).json()["config"]
        assert after["reloads"] == 1 and after["digest"] != before["digest"] and after["last_reload_error"] is None

        # an invalid edit is refused whole, with one line per problem; the old config keeps serving
        good = registry.read_text()
        _edit(registry, {"default": "nope", "aliases": {"zoe-chat": "missing-model"}})
        r = httpx.post(d.url + "/admin/reload", timeout=30)
        assert r.status_code == 422 and len(r.json()["problems"]) >= 2, r.text
        assert any("missing-model" in p for p in r.json()["problems"])
        assert _chat(d, "kitchen").status_code == 200 and _chat(d, "zoe-chat").status_code == 200
        status = httpx.get(d.url + "/admin/status", timeout=10).json()["config"]
        assert status["reloads"] == 1 and "missing-model" in status["last_reload_error"]
        assert "reload refused" in d.log()
        registry.write_text(good)
        assert httpx.post(d.url + "/admin/reload", timeout=30).json()["reason"] == "no changes"
    finally:
        d.stop()


def test_a_removed_model_drains_and_a_changed_loaded_model_reloads(tmp_path: Path, smollm_path: Path) -> None:
    models = {
        "smollm2-135m": smollm_entry(smollm_path, n_ctx=512),
        "spare": smollm_entry(smollm_path, n_ctx=256),
    }
    registry = write_registry(tmp_path, models, default="smollm2-135m")
    d = start_daemon(registry, tmp_path)
    try:
        assert _chat(d, "spare").status_code == 200  # a swap to spare: it is now the loaded model
        result: list[httpx.Response] = []
        runner = threading.Thread(target=lambda: result.append(_chat(d, "spare", max_tokens=48)))
        runner.start()
        time.sleep(0.3)
        data = yaml.safe_load(registry.read_text())
        del data["models"]["spare"]
        data["models"]["smollm2-135m"]["n_ctx"] = 1024
        registry.write_text(yaml.safe_dump(data, sort_keys=False))
        r = httpx.post(d.url + "/admin/reload", timeout=30).json()
        assert r["removed"] == ["spare"] and r["changed"] == ["smollm2-135m"] and r["unloading"] == "spare"
        runner.join(120)
        # the request routed before the reload finishes on the model it was planned with
        assert result[0].status_code == 200, (result[0].text, d.log()[-4000:])
        assert result[0].json()["usage"]["completion_tokens"] > 0
        assert _chat(d, "spare").status_code == 404
        served = _chat(d, "smollm2-135m")
        assert served.status_code == 200
        _wait_for(lambda: httpx.get(d.url + "/admin/status", timeout=10).json()["slot"]["n_ctx"] == 1024, 30)
    finally:
        d.stop()
