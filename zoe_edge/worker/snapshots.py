"""Prefix snapshots on disk, so a long prompt's KV state outlives its worker (runs in the worker only).

A swap, a TTL unload or memory pressure ends the worker, and with it the in-RAM prefix cache
(:mod:`zoe_edge.worker.prefix`); the next voice turn after a swap back used to pay Home Assistant's
2-4k token system prompt again. A worker that ends cleanly writes its long snapshots (and the live
KV) to ``<state_dir>/prefix/``; the next worker of the same model reads their headers at load and
restores one, with the same llama.cpp call the RAM cache uses, when a prompt shares its prefix.

A snapshot is only valid for the exact model file, context size, KV cache type and llama.cpp build
that made it, so those (and the chat template) form the key every file carries. A file that is
truncated, fails its checksum, does not parse, or belongs to a model file that changed or vanished
is deleted rather than trusted; nothing here raises into the worker.

File layout: ``MAGIC``, a big-endian u32 header length, the JSON header, then the payload
(``llama_state_seq_get_data`` bytes). Writes go to a temp file renamed into place, so a crash
mid-write never leaves a half file under a real name. The directory is bounded in bytes and files;
the least recently written or used go first.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoe_edge.worker.engine import Engine

log = logging.getLogger("zoe_edge.worker")

MAGIC = b"ZOEPFX\x00\x01"
FORMAT = 1
SUFFIX = ".zpfx"
_LEN = struct.Struct(">I")
MAX_HEADER = 16 * 1024 * 1024  # token ids of a 128k context as JSON fit well inside
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_FILES = 16
# a temp file this old is left over from a worker killed mid-write, not one being written now
STALE_TEMP_S = 600.0
# SIGTERM's grace before the daemon kills the worker is 5 s: stop writing well before that
PERSIST_BUDGET_S = 3.0


@dataclass(frozen=True)
class StoreKey:
    """What a KV state depends on; a snapshot restores only into a worker with the same key."""

    model_path: str
    model_size: int
    model_mtime_ns: int
    chat_template_sha: str
    n_ctx: int
    kv_cache_type: str
    llama_cpp: str

    @classmethod
    def for_model(
        cls, path: str, chat_template: str, n_ctx: int, kv_cache_type: str, llama_cpp_version: str
    ) -> StoreKey:
        real = os.path.realpath(path)
        st = os.stat(real)
        sha = hashlib.sha256(chat_template.encode("utf-8")).hexdigest()[:16]
        return cls(real, st.st_size, st.st_mtime_ns, sha, n_ctx, kv_cache_type, llama_cpp_version)

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def model_unchanged(self) -> bool:
        """The model file this key names is still there, as it was (else its snapshots are stale)."""
        try:
            st = os.stat(self.model_path)
        except OSError:
            return False
        return st.st_size == self.model_size and st.st_mtime_ns == self.model_mtime_ns


@dataclass(frozen=True)
class Entry:
    """One snapshot file of this store's key, known by its header (the payload is read on restore)."""

    path: Path
    tokens: tuple[int, ...]
    prompt_len: int
    offset: int  # where the payload starts
    size: int  # payload bytes
    crc32: int


def tokens_digest(tokens: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:16]


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """The parsed header and the payload offset; ``ValueError`` for anything that is not a whole file."""
    with path.open("rb") as f:
        head = f.read(len(MAGIC) + _LEN.size)
        if len(head) < len(MAGIC) + _LEN.size or head[: len(MAGIC)] != MAGIC:
            raise ValueError("not a snapshot file")
        (length,) = _LEN.unpack(head[len(MAGIC) :])
        if length > MAX_HEADER:
            raise ValueError(f"header of {length} bytes")
        raw = f.read(length)
    if len(raw) != length:
        raise ValueError("truncated header")
    header = json.loads(raw.decode("utf-8"))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("unknown format")
    return header, len(head) + length


def _entry(path: Path, header: dict[str, Any], offset: int) -> Entry:
    tokens = header["tokens"]
    size, prompt_len, crc = header["payload_size"], header["prompt_len"], header["payload_crc32"]
    if not (isinstance(tokens, list) and all(isinstance(t, int) for t in tokens) and tokens):
        raise ValueError("bad token list")
    if not all(isinstance(v, int) and v >= 0 for v in (size, prompt_len, crc)):
        raise ValueError("bad sizes")
    if path.stat().st_size != offset + size:
        raise ValueError("truncated payload")  # or trailing garbage: either way not what was written
    return Entry(path, tuple(tokens), min(prompt_len, len(tokens)), offset, size, crc)


class SnapshotStore:
    """The snapshot files of one directory; reads and writes those of ``key`` and prunes the rest."""

    def __init__(
        self, directory: Path, key: StoreKey, max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = DEFAULT_MAX_FILES
    ) -> None:
        self.directory = directory
        self.key = key
        self.digest = key.digest
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.deleted = 0  # files found corrupt or stale and removed
        self.written = 0

    def discard(self, path: Path, why: str) -> None:
        log.warning("prefix snapshots: deleting %s: %s", path.name, why)
        with contextlib.suppress(OSError):
            path.unlink()
            self.deleted += 1

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
        except OSError:
            return []

    def scan(self) -> list[Entry]:
        """This key's snapshots, most recent first; corrupt files and other keys' stale ones are deleted."""
        entries: list[tuple[float, Entry]] = []
        now = time.time()
        with contextlib.suppress(OSError):
            for tmp in self.directory.glob(".*.tmp"):
                if now - tmp.stat().st_mtime > STALE_TEMP_S:
                    self.discard(tmp, "left over from an interrupted write")
        for path in self._files():
            try:
                header, offset = _header(path)
                entry = _entry(path, header, offset)
                owner = StoreKey(**header["key"])
            except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                self.discard(path, f"unreadable ({exc})")
                continue
            if owner == self.key:
                entries.append((path.stat().st_mtime, entry))
            elif path.name.startswith(self.digest) or owner.digest != path.name.split("-")[0]:
                self.discard(path, "its header names another model or settings than its file name")
            elif owner.llama_cpp != self.key.llama_cpp or not owner.model_unchanged():
                self.discard(path, "stale (its model file or llama.cpp changed)")
        return [e for _, e in sorted(entries, key=lambda x: -x[0])]

    def read(self, entry: Entry) -> ctypes.Array[ctypes.c_uint8] | None:
        """The payload, checksum verified; ``None`` (and the file deleted) when it is not intact."""
        data = (ctypes.c_uint8 * entry.size)()
        try:
            with entry.path.open("rb") as f:
                f.seek(entry.offset)
                got = f.readinto(memoryview(data).cast("B"))
        except OSError as exc:
            self.discard(entry.path, f"unreadable ({exc})")
            return None
        if got != entry.size or zlib.crc32(data) != entry.crc32:
            self.discard(entry.path, "payload truncated or fails its checksum")
            return None
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # used: the last to be evicted
        return data

    def path_for(self, tokens: Sequence[int]) -> Path:
        return self.directory / f"{self.digest}-{tokens_digest(tokens)}{SUFFIX}"

    def write(
        self, tokens: Sequence[int], prompt_len: int, data: ctypes.Array[ctypes.c_uint8], size: int, keep: set[Path]
    ) -> Path | None:
        """Store one snapshot unless the bounds would need to evict one of ``keep``; its path, or ``None``."""
        target = self.path_for(tokens)
        if target.exists():
            with contextlib.suppress(OSError):
                os.utime(target)  # the same prefix is already on disk: only mark it recent
                return target
        payload = memoryview(data).cast("B")[:size]
        header = {
            "format": FORMAT,
            "key": asdict(self.key),
            "tokens": list(tokens),
            "prompt_len": prompt_len,
            "payload_size": size,
            "payload_crc32": zlib.crc32(payload),
            "created": time.time(),
        }
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        if len(MAGIC) + _LEN.size + len(raw) + size > self.max_bytes:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{target.name}.{os.getpid()}.tmp"
        try:
            with tmp.open("wb") as f:
                f.write(MAGIC + _LEN.pack(len(raw)) + raw)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())  # the rename must not land before the bytes do
            os.replace(tmp, target)
        except OSError as exc:
            log.warning("prefix snapshots: could not write %s: %s", target.name, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        if not self.enforce_bounds(keep | {target}):
            with contextlib.suppress(OSError):
                target.unlink()
            return None
        self.written += 1
        return target

    def enforce_bounds(self, keep: set[Path]) -> bool:
        """Delete the oldest files (any key) until the directory fits; ``False`` if only ``keep`` is left to go."""
        files: list[tuple[float, int, Path]] = []
        for path in self._files():
            with contextlib.suppress(OSError):
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        count = len(files)
        for _, size, path in files:
            if total <= self.max_bytes and count <= self.max_files:
                break
            if path in keep:
                continue
            with contextlib.suppress(OSError):
                path.unlink()
            total -= size
            count -= 1
        return total <= self.max_bytes and count <= self.max_files


# --- the worker's hooks --------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def snapshot_dir() -> Path | None:
    """Where snapshots live, or ``None`` when persistence is off (``ZOE_PREFIX_PERSIST=0``).

    ``ZOE_PREFIX_DIR`` wins; else ``<state_dir>/prefix`` with the state directory resolved as the
    daemon resolves it from its environment (``ZOE_STATE_DIR``, systemd's, XDG's).
    """
    if os.environ.get("ZOE_PREFIX_PERSIST", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get("ZOE_PREFIX_DIR"):
        return Path(os.environ["ZOE_PREFIX_DIR"])
    from zoe_edge.config import default_state_dir

    state = os.environ.get("ZOE_STATE_DIR")
    return (Path(state) if state else default_state_dir()) / "prefix"


def store_for(engine: Engine) -> SnapshotStore | None:
    """The store for this engine's model and settings, or ``None`` when persistence is off."""
    from importlib import metadata

    from zoe_edge.worker.templates import bundled_template

    directory = snapshot_dir()
    if directory is None:
        return None
    spec = engine.spec
    # the formatter's own choice (Engine._make_formatter): the GGUF's template, or a bundled one
    if spec.chat_format == "auto":
        template = engine.llm.metadata.get("tokenizer.chat_template") or bundled_template("chatml") or ""
    else:
        template = bundled_template(spec.chat_format) or ""
    try:
        version = metadata.version("llama-cpp-python")  # a rebuilt library must not restore an old state
    except metadata.PackageNotFoundError:
        version = "?"
    key = StoreKey.for_model(spec.path, f"{spec.chat_format}\n{template}", spec.n_ctx, spec.kv_cache_type, version)
    return SnapshotStore(
        directory,
        key,
        max_bytes=_env_int("ZOE_PREFIX_DISK_MB", DEFAULT_MAX_BYTES // (1024 * 1024)) * 1024 * 1024,
        max_files=_env_int("ZOE_PREFIX_DISK_FILES", DEFAULT_MAX_FILES),
    )


def attach(engine: Engine) -> None:
    """After a load: give the prefix cache the snapshots a previous worker of this model left."""
    cache = engine.prefix_cache
    if not cache.enabled:
        return
    try:
        store = store_for(engine)
        if store is not None:
            cache.attach_store(store)
    except Exception as exc:  # persistence is an optimisation: a broken state dir must not fail the load
        log.warning("prefix snapshots: not restored from disk: %s", exc)


def persist(engine: Engine | None) -> None:
    """On a clean exit: write the long snapshots and the live KV for the next worker of this model."""
    if engine is None or getattr(engine, "llm", None) is None:
        return
    try:
        engine.prefix_cache.persist(PERSIST_BUDGET_S)
    except BaseException as exc:  # a second SIGTERM or a disk error must not stop the exit
        log.warning("prefix snapshots: not written: %r", exc)
