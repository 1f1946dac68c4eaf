"""Download one GGUF file: resumable, verified, atomic, one download per file at a time.

The bytes stream into ``<dest>.partial``; a lost connection keeps them and the next pull asks for
the rest with ``Range``. Only a file whose SHA-256 matches and whose GGUF header is complete is
renamed onto ``dest``, so a model path never holds a half-written or foreign file.

Two pulls of one file in this process share one download (the second follows the first's events);
across processes a lock file beside the model makes the second wait, then find the file in place.

Use :func:`pull_file` inside ``contextlib.aclosing`` (or iterate it to the end): leaving the
iteration early is what cancels a download nobody follows any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp

from zoe_edge import __version__
from zoe_edge.gguf_info import GGUFError, read_gguf
from zoe_edge.store.errors import (
    DigestMismatch,
    DownloadFailed,
    DownloadInterrupted,
    NotEnoughSpace,
    NotGGUF,
    PullError,
)
from zoe_edge.store.events import (
    PULLING_MANIFEST,
    SUCCESS,
    VERIFYING,
    WRITING_MANIFEST,
    PullProgress,
    PullResult,
    pulling,
)

CHUNK_BYTES = 1 << 20  # written and hashed per thread hop: large enough that the hop costs nothing
# a full root filesystem breaks the board (logs, journald, apt): keep this much free after a download
DISK_HEADROOM = 256 * 2**20
PROGRESS_INTERVAL = 0.1  # seconds between progress events; the last one always goes out
LOCK_POLL = 0.2
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_read=60)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


# --- one download per file ---------------------------------------------------------------------


class _Flight:
    """A download in progress that any number of pulls of the same file follow."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        self.followers: list[asyncio.Queue[PullProgress | None]] = []
        self.last: PullProgress | None = None
        self.task: asyncio.Task[None] | None = None

    def publish(self, event: PullProgress | None) -> None:
        if event is not None:
            self.last = event
        for queue in self.followers:
            queue.put_nowait(event)


_flights: dict[str, _Flight] = {}


def _flight_key(dest: Path) -> str:
    return os.path.abspath(dest)  # not resolve(): the file may not exist, and symlinked dirs are rare here


class _StartOver(Exception):
    """The server will not continue the partial file: it was removed, the next request starts at byte 0."""


async def pull_file(
    url: str,
    dest: Path,
    sha256: str,
    *,
    session: aiohttp.ClientSession | None = None,
    retries: int = 2,
    headroom_bytes: int = DISK_HEADROOM,
) -> AsyncGenerator[PullProgress, None]:
    """Download ``url`` to ``dest`` unless a file with ``sha256`` is there; yields progress, ends with ``success``.

    Raises a :class:`~zoe_edge.store.errors.PullError`. ``retries``: resumed attempts after a lost
    connection before :class:`DownloadInterrupted` is raised (the bytes stay for the next pull).
    """
    sha256 = sha256.lower()
    key = _flight_key(dest)
    flight = _flights.get(key)
    if flight is not None and flight.sha256 != sha256:
        raise PullError(f"{dest} is being downloaded with another sha256 ({flight.sha256}); wait for it to finish")
    if flight is None:
        flight = _Flight(sha256)
        _flights[key] = flight
        flight.task = asyncio.create_task(_drive(flight, key, url, dest, sha256, session, retries, headroom_bytes))
        # a download whose followers all left is cancelled; its outcome then interests nobody
        flight.task.add_done_callback(lambda t: t.cancelled() or t.exception())
    async for event in _follow(flight):
        yield event


async def _drive(
    flight: _Flight,
    key: str,
    url: str,
    dest: Path,
    sha256: str,
    session: aiohttp.ClientSession | None,
    retries: int,
    headroom: int,
) -> None:
    try:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(aiohttp.ClientSession(timeout=TIMEOUT))
            async for event in _locked_download(session, url, dest, sha256, retries, headroom):
                flight.publish(event)
    finally:
        if _flights.get(key) is flight:
            del _flights[key]
        flight.publish(None)


async def _follow(flight: _Flight) -> AsyncIterator[PullProgress]:
    queue: asyncio.Queue[PullProgress | None] = asyncio.Queue()
    if flight.last is not None:  # a late follower starts from where the download is
        queue.put_nowait(flight.last)
    flight.followers.append(queue)
    assert flight.task is not None
    try:
        while (event := await queue.get()) is not None:
            yield event
        await flight.task  # the download's own error, for every follower
    finally:
        flight.followers.remove(queue)
        if not flight.followers and not flight.task.done():
            flight.task.cancel()


async def _locked_download(
    session: aiohttp.ClientSession, url: str, dest: Path, sha256: str, retries: int, headroom: int
) -> AsyncIterator[PullProgress]:
    yield PullProgress(PULLING_MANIFEST)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(dest), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PullError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    waiting = True
                    yield PullProgress(f"waiting for another download of {dest.name}")
                await asyncio.sleep(LOCK_POLL)
        if await asyncio.to_thread(dest.exists):
            async for event in _already_present(dest, sha256):
                yield event
            return
        async for event in _download(session, url, dest, sha256, retries, headroom):
            yield event
    finally:
        os.close(fd)  # releases the lock; the lock file stays (removing it would race a waiter)


async def _already_present(dest: Path, sha256: str) -> AsyncIterator[PullProgress]:
    yield PullProgress(VERIFYING)
    actual = await asyncio.to_thread(_hash_file, dest)
    if actual != sha256:
        # not ours to delete: the owner may have put another build there on purpose
        raise DigestMismatch(
            f"{dest} is already there but its sha256 is {actual}, not the registry's {sha256}: "
            "remove the file (or correct sha256 in models.yaml) and pull again",
            sha256,
            actual,
        )
    await _check_gguf(dest, remove=False)
    size = (await asyncio.to_thread(dest.stat)).st_size
    yield PullProgress(pulling(sha256), f"sha256:{sha256}", size, size)
    yield PullProgress(SUCCESS, result=PullResult(dest, size, sha256, already_present=True))


async def _download(
    session: aiohttp.ClientSession, url: str, dest: Path, sha256: str, retries: int, headroom: int
) -> AsyncIterator[PullProgress]:
    partial = partial_path(dest)
    state = _Transfer(url, partial, sha256, headroom)
    attempt = 0
    while True:
        try:
            async for event in state.run(session):
                yield event
            break
        except _StartOver:
            continue  # not a retry: the partial is gone, so this cannot repeat
        except DownloadInterrupted:
            if attempt >= retries:
                raise
            attempt += 1
            await asyncio.sleep(min(2.0 ** (attempt - 1), 10.0))
    yield PullProgress(VERIFYING)
    actual = state.hasher.hexdigest()
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise DigestMismatch(
            f"{url} has sha256 {actual}, the registry says {sha256}: the download was removed; "
            "check the url and sha256 in models.yaml",
            sha256,
            actual,
        )
    await _check_gguf(partial, remove=True)
    yield PullProgress(WRITING_MANIFEST)
    os.replace(partial, dest)
    _fsync_dir(dest.parent)
    result = PullResult(dest, state.completed, sha256, state.transferred, state.resumed_from)
    yield PullProgress(SUCCESS, result=result)


class _Transfer:
    """The bytes of one file across attempts: the partial file, its running hash, the counts."""

    def __init__(self, url: str, partial: Path, sha256: str, headroom: int) -> None:
        self.url = url
        self.partial = partial
        self.sha256 = sha256
        self.headroom = headroom
        self.hasher = hashlib.sha256()
        self.completed = 0  # bytes in the partial file and in the hash
        self.transferred = 0  # bytes received by this pull
        self.resumed_from = 0
        self.hashed_existing = False
        self.total: int | None = None

    async def run(self, session: aiohttp.ClientSession) -> AsyncIterator[PullProgress]:
        if not self.hashed_existing:
            self.hashed_existing = True
            # a regular partial from an earlier pull is resumed; the hash must cover its bytes too
            if self.partial.is_file() and self.partial.stat().st_size > 0:
                self.completed = await asyncio.to_thread(_hash_into, self.hasher, self.partial)
                self.resumed_from = self.completed
        headers = {"User-Agent": f"zoe-edge/{__version__}", "Accept-Encoding": "identity"}
        token = os.environ.get("HF_TOKEN")
        if token and self.url.startswith("https://huggingface.co/"):
            headers["Authorization"] = f"Bearer {token}"  # gated repositories; aiohttp drops it on redirects away
        if self.completed:
            headers["Range"] = f"bytes={self.completed}-"
        try:
            async with session.get(self.url, headers=headers, timeout=TIMEOUT) as resp:
                total = self._accept(resp)
                async for event in self._stream(resp, total):
                    yield event
        except NotGGUF:
            self.partial.unlink(missing_ok=True)
            raise
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError) as exc:
            raise DownloadInterrupted(
                f"the connection to {self.url} was lost at {_mb(self.completed)}"
                f"{'' if self.total is None else ' of ' + _mb(self.total)} ({type(exc).__name__}); "
                "pull again to resume",
                self.completed,
                self.total,
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise DownloadFailed(f"cannot reach {self.url}: {exc}") from None

    def _accept(self, resp: aiohttp.ClientResponse) -> int | None:
        """The file's total size; starts over when the server ignored (or could not honour) ``Range``."""
        if resp.status == 206 and self.completed:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == self.completed:
                self.total = None if match.group(3) == "*" else int(match.group(3))
                return self.total
            # a range other than the one asked for: the partial cannot be trusted to line up
            self._restart()
            raise _StartOver
        if resp.status == 416 and self.completed:
            # the partial is as long as the file or longer (the file changed upstream): only a fresh start helps
            self._restart()
            raise _StartOver
        if resp.status != 200:
            hint = " (a gated repository? set HF_TOKEN)" if resp.status in (401, 403) else ""
            why = f"{self.url} answered HTTP {resp.status} {resp.reason or ''}".rstrip()
            raise DownloadFailed(why + hint, resp.status)
        if self.completed:  # 200 to a Range request: the body is the whole file again
            self._restart()
        self.total = resp.content_length
        return self.total

    def _restart(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()
        self.completed = 0
        self.resumed_from = 0

    def _check_space(self, remaining: int | None) -> None:
        if remaining is None:
            return  # no length given: the write itself reports a full disk
        try:
            free = shutil.disk_usage(self.partial.parent).free
        except OSError as exc:
            raise PullError(f"cannot check the free space of {self.partial.parent}: {exc.strerror or exc}") from None
        if free < remaining + self.headroom:
            raise NotEnoughSpace(
                f"not enough disk space for {self.partial.name.removesuffix('.partial')} in {self.partial.parent}: "
                f"needs {_mb(remaining)} plus {_mb(self.headroom)} kept free, {_mb(free)} free "
                f"({_mb(remaining + self.headroom - free)} short)",
                remaining,
                free,
            )

    async def _stream(self, resp: aiohttp.ClientResponse, total: int | None) -> AsyncIterator[PullProgress]:
        self._check_space(None if total is None else total - self.completed)
        digest = f"sha256:{self.sha256}"
        label = pulling(self.sha256)
        yield PullProgress(label, digest, total, self.completed)
        fresh = self.completed == 0
        try:
            fh = await asyncio.to_thread(_open, self.partial, bool(self.completed))
        except OSError as exc:
            raise PullError(f"cannot write {self.partial}: {exc.strerror or exc}") from None
        buf = bytearray()
        last = time.monotonic()
        try:
            async for chunk in resp.content.iter_chunked(256 * 1024):
                buf += chunk
                self.transferred += len(chunk)
                if fresh and len(buf) >= 4:
                    fresh = False
                    if bytes(buf[:4]) != b"GGUF":  # an HTML error page or a wrong file: stop before the rest
                        raise NotGGUF(f"{self.url} is not a GGUF file (it starts with {bytes(buf[:16])!r})")
                if len(buf) >= CHUNK_BYTES:
                    await self._write(fh, buf)
                    if time.monotonic() - last >= PROGRESS_INTERVAL:
                        last = time.monotonic()
                        yield PullProgress(label, digest, total, self.completed)
            await self._write(fh, buf)
        except BaseException:
            # the bytes received before a lost connection are good: keep them for the resume
            with contextlib.suppress(PullError):
                await self._write(fh, buf)
            raise
        finally:
            await asyncio.to_thread(_close, fh, self.partial)
        if total is not None and self.completed != total:
            raise aiohttp.ClientPayloadError(f"the body ended at {self.completed} of {total} bytes")
        yield PullProgress(label, digest, total if total is not None else self.completed, self.completed)

    async def _write(self, fh: IO[bytes], buf: bytearray) -> None:
        if not buf:
            return
        data = bytes(buf)
        buf.clear()
        try:
            await asyncio.to_thread(_write_hashed, fh, self.hasher, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # a full disk is the owner's to free; a partial would only keep it full
                with contextlib.suppress(OSError):
                    fh.close()
                self.partial.unlink(missing_ok=True)
                raise NotEnoughSpace(
                    f"the disk filled up while writing {self.partial} at {_mb(self.completed)}: "
                    "the partial download was removed; free some space and pull again",
                    self.total,
                    None,
                ) from None
            raise PullError(f"cannot write {self.partial}: {exc.strerror or exc}") from None
        self.completed += len(data)


# --- blocking helpers (run in a thread) ----------------------------------------------------------


def _open(path: Path, append: bool) -> IO[bytes]:
    return path.open("ab" if append else "wb")


def _write_hashed(fh: IO[bytes], hasher: Any, data: bytes) -> None:
    fh.write(data)
    fh.flush()  # surface ENOSPC here, not at close where the bytes would be counted already
    hasher.update(data)


def _close(fh: IO[bytes], path: Path) -> None:
    if fh.closed:
        return
    try:
        fh.flush()
        if path.is_file():
            os.fsync(fh.fileno())
    except OSError:
        pass  # a write error was already reported; close what is left
    finally:
        fh.close()


def _hash_into(hasher: Any, path: Path) -> int:
    n = 0
    with path.open("rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            hasher.update(block)
            n += len(block)
    return n


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    _hash_into(hasher, path)
    return hasher.hexdigest()


def _fsync_dir(path: Path) -> None:
    # the rename is durable only once the directory entry is on disk (a power cut on a board is routine)
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def _check_gguf(path: Path, *, remove: bool) -> None:
    try:
        await asyncio.to_thread(read_gguf, path)
    except GGUFError as exc:
        if remove:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        raise NotGGUF(f"{exc}{'; the download was removed' if remove else ''}") from None
