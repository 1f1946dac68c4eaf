"""What a GGUF file says about itself, read from its header without loading the weights.

Used to check a file before a worker is spawned for it (a truncated download should be a clear
error, not a llama.cpp crash), by ``doctor`` and ``models``, and by the memory planner. Results
are cached by path, size and modification time.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# llama.cpp's LLAMA_FTYPE numbering, as written in general.file_type
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
}


class GGUFError(Exception):
    """The file is missing, unreadable or not a complete GGUF model."""


class GGUFMissing(GGUFError):
    """There is no file at the model's path."""


@dataclass(frozen=True)
class GGUFInfo:
    path: str
    size_bytes: int
    architecture: str
    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    embedding_length: int
    head_dim: int
    context_length: int
    n_vocab: int
    file_type: str
    n_params: int
    has_chat_template: bool

    @property
    def parameter_size(self) -> str:
        """Ollama-style size label such as ``135M`` or ``3.2B``."""
        n = self.n_params
        if n >= 1_000_000_000:
            return f"{n / 1e9:.1f}B"
        return f"{round(n / 1e6)}M"


_cache: dict[tuple[str, int, int], GGUFInfo] = {}
_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


class _Header:
    """A forward-only GGUF header parser.

    ``gguf.GGUFReader`` builds numpy views for every element of every array, which takes seconds
    for a 262k-token vocabulary (9 s for Gemma 3 on two cores). The header is a plain sequence of
    length-prefixed records, so we read the scalars we need, skip arrays (keeping their length),
    and take value and tensor type sizes from the ``gguf`` package's own tables.
    """

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise GGUFError("the header ends early")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise GGUFError("the header ends early")
        self.pos += n

    def string(self) -> str:
        n = self.take("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.data[start : self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.take("<I"), self.take("<Q")
            if item_type == _STRING:
                for _ in range(count):
                    self.skip(self.take("<Q"))
            elif item_type == _ARRAY:
                for _ in range(count):
                    self.value(item_type)
            elif item_type in _SCALARS:
                self.skip(count * struct.calcsize(_SCALARS[item_type]))
            else:
                raise GGUFError(f"unknown array item type {item_type}")
            return count  # the length stands in for the array
        if vtype not in _SCALARS:
            raise GGUFError(f"unknown metadata value type {vtype}")
        return self.take(_SCALARS[vtype])


def _scalar_formats() -> dict[int, str]:
    from gguf.constants import GGUFValueType as T

    return {
        T.UINT8: "<B",
        T.INT8: "<b",
        T.UINT16: "<H",
        T.INT16: "<h",
        T.UINT32: "<I",
        T.INT32: "<i",
        T.FLOAT32: "<f",
        T.BOOL: "<?",
        T.UINT64: "<Q",
        T.INT64: "<q",
        T.FLOAT64: "<d",
    }


_SCALARS = _scalar_formats()
_STRING, _ARRAY = 8, 9  # gguf.constants.GGUFValueType.STRING / ARRAY


def _parse(view: memoryview) -> tuple[dict[str, Any], list[tuple[int, int]], int]:
    """Metadata, (absolute offset, n_bytes) of every tensor, and the parameter count."""
    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

    h = _Header(view)
    h.pos = 4
    version = h.take("<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = h.take("<Q"), h.take("<Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = h.string()
        meta[key] = h.value(h.take("<I"))
    tensors: list[tuple[int, int]] = []
    n_params = 0
    for _ in range(n_tensors):
        h.string()
        elements = 1
        for _ in range(h.take("<I")):
            elements *= h.take("<Q")
        ttype, offset = h.take("<I"), h.take("<Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise GGUFError(f"unknown tensor type {ttype}") from None
        tensors.append((offset, elements * type_size // block))
        n_params += elements
    align = int(meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
    data_start = -(-h.pos // align) * align
    return meta, [(data_start + off, n) for off, n in tensors], n_params


def _read(path: Path, size: int) -> GGUFInfo:
    with path.open("rb") as fh:
        magic = fh.read(4)
        if magic != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                meta, tensors, n_params = _parse(view)
            except GGUFError as exc:
                raise GGUFError(f"{path} is truncated or corrupt: {exc}; download or assemble it again") from None
            finally:
                view.release()
    end = max((off + n for off, n in tensors), default=0)
    if end > size:
        raise GGUFError(
            f"{path} is truncated: its tensors need {end} bytes but the file has {size}; download or assemble it again"
        )
    arch = str(meta.get("general.architecture", "unknown"))
    n_heads = int(meta.get(f"{arch}.attention.head_count", 0) or 0)
    embd = int(meta.get(f"{arch}.embedding_length", 0) or 0)
    head_dim = int(meta.get(f"{arch}.attention.key_length", 0) or 0) or (embd // n_heads if n_heads else 0)
    ftype = meta.get("general.file_type")
    return GGUFInfo(
        path=str(path),
        size_bytes=size,
        architecture=arch,
        name=str(meta.get("general.name", path.stem)),
        n_layers=int(meta.get(f"{arch}.block_count", 0) or 0),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads) or n_heads),
        embedding_length=embd,
        head_dim=head_dim,
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),
        n_vocab=int(meta.get("tokenizer.ggml.tokens", 0) or meta.get(f"{arch}.vocab_size", 0) or 0),
        file_type=FILE_TYPES.get(int(ftype), f"type {ftype}") if ftype is not None else "unknown",
        n_params=n_params,
        has_chat_template="tokenizer.chat_template" in meta,
    )


def read_gguf(path: Path) -> GGUFInfo:
    """Header facts of a GGUF file; raises :class:`GGUFError` with a reason a person can act on."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise GGUFMissing(f"model file {path} does not exist") from None
    except OSError as exc:
        raise GGUFError(f"model file {path} cannot be read: {exc.strerror}") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _guard:
        lock = _locks.setdefault(str(path), threading.Lock())
    # one parse per file at a time: concurrent callers (a load and a /ready probe) wait for it
    with lock:
        if key in _cache:
            return _cache[key]
        try:
            info = _read(path, st.st_size)
        except OSError as exc:
            raise GGUFError(f"model file {path} cannot be read: {exc.strerror}") from None
        _cache[key] = info
        return info


def read_chat_template(path: Path) -> str | None:
    """The chat template in a GGUF's metadata (:class:`GGUFInfo` keeps only whether there is one)."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            meta = _parse(view)[0]
        finally:
            view.release()
    template = meta.get("tokenizer.chat_template")
    return template if isinstance(template, str) else None
