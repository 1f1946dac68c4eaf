"""Ollama's ``/api/pull`` on the real daemon, driven by the ``ollama`` client Home Assistant uses: a registry
model with a ``url`` is downloaded from a real loopback HTTP server, verified, and then served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import ollama
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import smollm_entry, start_daemon, write_registry
from tests.fileserver import FileServer, sha256_of


@pytest.fixture
async def files(smollm_path: Path) -> AsyncIterator[tuple[FileServer, str]]:
    server = FileServer(smollm_path)
    app = web.Application()
    app.router.add_get("/m.gguf", server.handle)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield server, str(test_server.make_url("/m.gguf"))
    finally:
        await test_server.close()


async def test_ollama_client_pulls_a_url_model_with_progress_then_it_serves(
    files: tuple[FileServer, str], smollm_path: Path, tmp_path: Path
) -> None:
    server, url = files
    digest, size = await asyncio.to_thread(lambda: (sha256_of(smollm_path), smollm_path.stat().st_size))
    fetched = tmp_path / "fetched.gguf"
    registry = write_registry(
        tmp_path,
        {
            "smollm2-135m": smollm_entry(smollm_path, n_ctx=512),
            "fetched": {"file": str(fetched), "url": url, "sha256": digest, "n_ctx": 512, "n_threads": 2},
            "broken": {"file": str(tmp_path / "broken.gguf"), "url": url, "sha256": "0" * 64, "n_threads": 2},
        },
    )
    d = start_daemon(registry, tmp_path)
    try:
        c = ollama.AsyncClient(host=d.url)
        lines = [p async for p in await c.pull("fetched:latest", stream=True)]
        statuses = [p.status for p in lines]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert "verifying sha256 digest" in statuses
        progress = [p for p in lines if p.total]
        assert progress and progress[-1].completed == progress[-1].total == size
        assert sha256_of(fetched) == digest  # the whole file, byte for byte
        assert len(server.requests) == 1
        # present now: a second pull downloads nothing and says success at once (as Ollama does)
        assert (await c.pull("fetched")).status == "success"
        assert len(server.requests) == 1
        answer = await c.generate(model="fetched", prompt="Hello", options={"num_predict": 3})
        assert answer.done and answer.eval_count and answer.eval_count > 0
        # a digest mismatch: the client raises the daemon's error line, and no file is left behind
        with pytest.raises(ollama.ResponseError) as err:
            async for _ in await c.pull("broken", stream=True):
                pass
        assert "sha256" in err.value.error
        assert not (tmp_path / "broken.gguf").exists()
        # the daemon keeps serving after the failed pull
        assert (await c.generate(model="smollm2-135m", prompt="Hi", options={"num_predict": 2})).done
    finally:
        d.stop()
