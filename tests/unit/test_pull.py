"""zoe_edge.store: real downloads of the SmolLM2 GGUF from a loopback aiohttp server."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import shutil
import sys
from collections import namedtuple
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fileserver import FileServer, sha256_of
from zoe_edge.registry import parse_registry
from zoe_edge.store import (
    DigestMismatch,
    DownloadInterrupted,
    NotEnoughSpace,
    NotGGUF,
    NotPullable,
    PullProgress,
    partial_path,
    pull_file,
    pull_model,
)
from zoe_edge.store.pull import lock_path
from zoe_edge.supervisor.device import SIMULATED
from zoe_edge.supervisor.planner import Budget


@pytest.fixture(scope="session")
def smollm_sha256(smollm_gguf: Path) -> str:
    return sha256_of(smollm_gguf)


Served = namedtuple("Served", "server url")


@pytest.fixture
async def served(smollm_gguf: Path) -> AsyncIterator[Served]:
    files = FileServer(smollm_gguf)
    app = web.Application()
    app.router.add_get("/m.gguf", files.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Served(files, str(server.make_url("/m.gguf")))
    finally:
        await server.close()


async def collect(events: AsyncIterator[PullProgress]) -> list[PullProgress]:
    return [event async for event in events]


def same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


# --- the downloader -------------------------------------------------------------------------------


async def test_pull_streams_progress_and_verifies(
    served: Served, tmp_path: Path, smollm_gguf: Path, smollm_sha256: str
) -> None:
    dest = tmp_path / "models" / "smol.gguf"
    events = await collect(pull_file(served.url, dest, smollm_sha256))
    statuses = [e.status for e in events]
    digest12 = f"pulling {smollm_sha256[:12]}"
    # Ollama's order: manifest, the layer's progress, verify, write, success
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [e for e in events if e.status == digest12]
    assert len(progress) >= 2
    assert all(e.total == served.server.size and e.digest == f"sha256:{smollm_sha256}" for e in progress)
    completed = [e.completed or 0 for e in progress]
    assert completed == sorted(completed) and completed[0] == 0 and completed[-1] == served.server.size
    assert progress[-1].as_ollama() == {
        "status": digest12,
        "digest": f"sha256:{smollm_sha256}",
        "total": served.server.size,
        "completed": served.server.size,
    }
    assert events[-1].as_ollama() == {"status": "success"}
    result = events[-1].result
    assert result is not None and result.path == dest and result.downloaded == served.server.size
    assert same_file(dest, smollm_gguf)
    assert not partial_path(dest).exists()
    assert served.server.requests[0].get("Accept-Encoding") == "identity"

    # a second pull finds the verified file and transfers nothing
    again = await collect(pull_file(served.url, dest, smollm_sha256))
    assert again[-1].result is not None and again[-1].result.already_present
    assert len(served.server.requests) == 1


async def test_digest_mismatch_removes_the_download(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "smol.gguf"
    wrong = "0" * 64
    with pytest.raises(DigestMismatch) as caught:
        await collect(pull_file(served.url, dest, wrong))
    assert wrong in str(caught.value) and caught.value.expected == wrong
    assert "removed" in str(caught.value)
    assert not dest.exists() and not partial_path(dest).exists()


async def test_dropped_connection_resumes_with_range(
    served: Served, tmp_path: Path, smollm_gguf: Path, smollm_sha256: str
) -> None:
    size = served.server.size
    half = size // 2
    served.server.drop_at = half
    dest = tmp_path / "smol.gguf"
    with pytest.raises(DownloadInterrupted) as caught:
        await collect(pull_file(served.url, dest, smollm_sha256, retries=0))
    assert "pull again to resume" in str(caught.value)
    assert not dest.exists()
    kept = partial_path(dest).stat().st_size
    assert 0 < kept <= half
    assert served.server.served == half

    events = await collect(pull_file(served.url, dest, smollm_sha256))
    assert served.server.requests[-1]["Range"] == f"bytes={kept}-"
    assert served.server.served == half + (size - kept), "only the rest is transferred"
    result = events[-1].result
    assert result is not None and result.resumed_from == kept and result.downloaded == size - kept
    first = next(e for e in events if e.status.startswith("pulling ") and e.total)
    assert first.completed == kept  # the bar starts where the last pull stopped
    assert same_file(dest, smollm_gguf)


async def test_dropped_connection_is_retried_within_one_pull(
    served: Served, tmp_path: Path, smollm_gguf: Path, smollm_sha256: str
) -> None:
    served.server.drop_at = served.server.size // 3
    dest = tmp_path / "smol.gguf"
    events = await collect(pull_file(served.url, dest, smollm_sha256, retries=1))
    assert events[-1].status == "success"
    assert len(served.server.requests) == 2
    # bytes still in the client's buffer when the connection broke are asked for again
    kept = int(served.server.requests[1]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < kept <= served.server.size // 3
    assert served.server.served == served.server.size // 3 + served.server.size - kept
    assert same_file(dest, smollm_gguf)


async def test_server_ignoring_range_restarts_cleanly(
    served: Served, tmp_path: Path, smollm_gguf: Path, smollm_sha256: str
) -> None:
    dest = tmp_path / "smol.gguf"
    # a partial that does not even match the file: appending to it would fail the digest
    partial_path(dest).write_bytes(b"\0" * 1000)
    served.server.ignore_range = True
    events = await collect(pull_file(served.url, dest, smollm_sha256, retries=0))
    assert served.server.requests[0]["Range"] == "bytes=1000-"
    result = events[-1].result
    assert result is not None and result.resumed_from == 0 and result.downloaded == served.server.size
    assert same_file(dest, smollm_gguf)


async def test_not_enough_space_refuses_before_writing(
    served: Served, tmp_path: Path, smollm_sha256: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "models" / "smol.gguf"
    real = shutil.disk_usage

    def full(path: Any) -> Any:
        usage = real(path)
        if Path(path) == dest.parent:
            return usage._replace(free=50 * 2**20)
        return usage

    monkeypatch.setattr(shutil, "disk_usage", full)
    with pytest.raises(NotEnoughSpace) as caught:
        await collect(pull_file(served.url, dest, smollm_sha256))
    message = str(caught.value)
    assert "50.0 MB free" in message and f"{served.server.size / 2**20:,.1f} MB" in message
    assert caught.value.free == 50 * 2**20 and caught.value.needed == served.server.size
    assert not dest.exists() and not partial_path(dest).exists()
    # the server may have filled socket buffers before the client hung up; nothing reached the disk
    assert served.server.served < served.server.size


def dev_full_errno() -> int | None:
    try:
        with open("/dev/full", "wb") as fh:
            fh.write(b"x")
            fh.flush()
    except OSError as exc:
        return exc.errno
    return None


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_disk_filling_up_mid_write_removes_the_partial(
    served: Served, tmp_path: Path, smollm_sha256: str
) -> None:
    dest = tmp_path / "smol.gguf"
    # every write to /dev/full fails with ENOSPC from the kernel: a disk that is full right now
    partial_path(dest).symlink_to("/dev/full")
    assert dev_full_errno() == errno.ENOSPC
    with pytest.raises(NotEnoughSpace, match="filled up"):
        await collect(pull_file(served.url, dest, smollm_sha256))
    assert not partial_path(dest).is_symlink() and not partial_path(dest).exists() and not dest.exists()


async def test_two_concurrent_pulls_share_one_download(
    served: Served, tmp_path: Path, smollm_gguf: Path, smollm_sha256: str
) -> None:
    dest = tmp_path / "smol.gguf"
    served.server.pause = asyncio.Event()  # hold the body so the second pull surely joins mid-flight
    first = asyncio.create_task(collect(pull_file(served.url, dest, smollm_sha256)))
    await asyncio.wait_for(served.server.arrived.wait(), 10)
    second = asyncio.create_task(collect(pull_file(served.url, dest, smollm_sha256)))
    await asyncio.sleep(0.05)
    served.server.pause.set()
    a, b = await asyncio.gather(first, second)
    assert len(served.server.requests) == 1 and served.server.served == served.server.size
    assert a[-1].status == b[-1].status == "success"
    assert a[-1].result == b[-1].result
    assert any(e.status.startswith("pulling ") and e.completed == served.server.size for e in b)
    assert same_file(dest, smollm_gguf)


async def test_another_process_holding_the_lock_makes_a_pull_wait(
    served: Served, tmp_path: Path, smollm_sha256: str
) -> None:
    dest = tmp_path / "smol.gguf"
    fd = os.open(lock_path(dest), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a separate open file: flock treats it as another owner
    try:
        events: list[PullProgress] = []

        async def run() -> None:
            async for event in pull_file(served.url, dest, smollm_sha256):
                events.append(event)

        task = asyncio.create_task(run())
        await asyncio.sleep(0.5)
        assert [e.status for e in events] == ["pulling manifest", "waiting for another download of smol.gguf"]
        assert not served.server.requests
    finally:
        os.close(fd)
    await task
    assert events[-1].status == "success"


async def test_an_html_page_is_not_a_model(tmp_path: Path) -> None:
    page = b"<html><body>Sign in to download</body></html>"

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/m.gguf", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        dest = tmp_path / "smol.gguf"
        with pytest.raises(NotGGUF, match="not a GGUF"):
            await collect(pull_file(str(server.make_url("/m.gguf")), dest, hashlib.sha256(page).hexdigest()))
    assert not dest.exists() and not partial_path(dest).exists()


# --- a registry model, and whether it fits -------------------------------------------------------


def registry_for(url: str, sha256: str) -> Any:
    return parse_registry(
        {
            "default": "smol",
            "models": {"smol": {"url": url, "sha256": sha256, "n_ctx": 2048}, "local": {"file": "absent.gguf"}},
            "aliases": {"zoe-smol": "smol"},
        }
    )


async def test_pull_model_by_alias_reports_the_fit(served: Served, tmp_path: Path, smollm_sha256: str) -> None:
    registry = registry_for(served.url, smollm_sha256)
    state = tmp_path / "state"
    budget = Budget.from_settings(SIMULATED["orin-nano-8gb"], registry.device)
    events = await collect(pull_model("zoe-smol:latest", registry, tmp_path, state, budget=budget))
    result = events[-1].result
    assert result is not None and result.path == state / "models" / "smol.gguf"
    assert result.plan is not None and result.fits is True
    assert result.fit.startswith("fits") and "orin" in result.fit.lower()


async def test_pull_model_refuses_unknown_and_urlless_models(tmp_path: Path, smollm_sha256: str) -> None:
    registry = registry_for("http://127.0.0.1:9/m.gguf", smollm_sha256)
    with pytest.raises(NotPullable, match="not a model in the registry"):
        await collect(pull_model("ghost", registry, tmp_path, tmp_path))
    with pytest.raises(NotPullable, match="no url"):
        await collect(pull_model("local", registry, tmp_path, tmp_path))


# --- the command line ------------------------------------------------------------------------------


async def run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zoe_edge",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_registry(tmp_path: Path, models: dict[str, Any]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"default": next(iter(models)), "models": models}))
    return path


async def test_cli_pull_end_to_end(served: Served, tmp_path: Path, smollm_gguf: Path, smollm_sha256: str) -> None:
    config = write_registry(tmp_path, {"smol": {"url": served.url, "sha256": smollm_sha256}})
    state = tmp_path / "state"
    args = ("--config", str(config), "--state-dir", str(state), "--profile", "orin-nano-8gb")
    code, out, err = await run_cli("pull", "smol", *args)
    assert code == 0, err
    assert "verifying sha256 digest" in err and "success" in err
    assert f"{state / 'models' / 'smol.gguf'}" in out
    assert "smol: fits:" in out
    assert same_file(state / "models" / "smol.gguf", smollm_gguf)

    code, out, err = await run_cli("pull", "ghost", *args)
    assert code == 2 and "not a model in the registry" in err


async def test_cli_pull_bad_digest_exits_1(served: Served, tmp_path: Path) -> None:
    config = write_registry(tmp_path, {"smol": {"url": served.url, "sha256": "ab" * 32}})
    code, _, err = await run_cli("pull", "smol", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert code == 1
    assert "error:" in err and "sha256" in err and "removed" in err


async def test_models_prepare_pulls_missing_url_models(served: Served, tmp_path: Path, smollm_sha256: str) -> None:
    models = {
        "smol": {"url": served.url, "sha256": smollm_sha256, "file": "downloads/smol.gguf"},
        "broken": {"url": served.url.replace("/m.gguf", "/nothing.gguf"), "sha256": "cd" * 32},
    }
    config = write_registry(tmp_path, models)
    code, out, err = await run_cli("models", "--prepare", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert code == 1, "one model could not be prepared"
    assert (tmp_path / "downloads" / "smol.gguf").is_file()
    assert "HTTP 404" in err and "could not prepare broken" in err
    row = next(line for line in out.splitlines() if line.split()[:1] == ["smol"])
    assert "yes" in row.split()
