"""A real loopback HTTP server for one model file: honours ``Range`` unless told not to, counts what it sent,
and can drop the connection mid-body; the pull tests download from it."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from aiohttp import web

SERVE_CHUNK = 256 * 1024


class FileServer:
    """Serves one file at /m.gguf, honouring ``Range`` unless told not to, and counts what it sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.requests: list[dict[str, str]] = []
        self.served = 0  # body bytes written, over every request
        self.drop_at: int | None = None  # close the connection once this byte offset is reached (once)
        self.ignore_range = False
        self.pause: asyncio.Event | None = None  # when set, hold the body until the event is set
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        self.arrived.set()
        start, status = 0, 200
        header = request.headers.get("Range")
        if header and not self.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            status = 206
        resp = web.StreamResponse(status=status)
        resp.content_length = self.size - start
        resp.content_type = "application/octet-stream"
        if status == 206:
            resp.headers["Content-Range"] = f"bytes {start}-{self.size - 1}/{self.size}"
        await resp.prepare(request)
        if self.pause is not None:
            await self.pause.wait()
        with self.path.open("rb") as fh:
            fh.seek(start)
            pos = start
            while pos < self.size:
                n = min(SERVE_CHUNK, self.size - pos)
                if self.drop_at is not None and pos + n >= self.drop_at:
                    n = self.drop_at - pos
                    await resp.write(fh.read(n))
                    self.served += n
                    self.drop_at = None
                    assert request.transport is not None
                    request.transport.close()  # mid-body: the client sees a short payload
                    return resp
                await resp.write(fh.read(n))
                self.served += n
                pos += n
        await resp.write_eof()
        return resp


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
