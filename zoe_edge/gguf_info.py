"""What a GGUF file says about itself, read with the ``gguf`` package without loading the weights.

Used to check a file before a worker is spawned for it (a truncated download should be a clear
error, not a llama.cpp crash), by ``doctor`` and ``models``, and later by the memory planner.
Parsing a header takes a second or two (the tokenizer arrays are large), so results are cached
by path, size and modification time.
"""

from __future__ import annotations

import os
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


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value if value is not None else default


def _read(path: Path, size: int) -> GGUFInfo:
    from gguf import GGUFReader  # heavy import (numpy), only when a header is read

    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        # the reader maps every tensor, so a short file fails here before the size check below
        raise GGUFError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); download or assemble it again"
        ) from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise GGUFError(
            f"{path} is truncated: its tensors need {end} bytes but the file has {size}; download or assemble it again"
        )
    arch = str(_field(reader, "general.architecture", "unknown"))
    n_heads = int(_field(reader, f"{arch}.attention.head_count", 0) or 0)
    embd = int(_field(reader, f"{arch}.embedding_length", 0) or 0)
    head_dim = int(_field(reader, f"{arch}.attention.key_length", 0) or 0) or (embd // n_heads if n_heads else 0)
    ftype = _field(reader, "general.file_type")
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    return GGUFInfo(
        path=str(path),
        size_bytes=size,
        architecture=arch,
        name=str(_field(reader, "general.name", path.stem)),
        n_layers=int(_field(reader, f"{arch}.block_count", 0) or 0),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", n_heads) or n_heads),
        embedding_length=embd,
        head_dim=head_dim,
        context_length=int(_field(reader, f"{arch}.context_length", 0) or 0),
        n_vocab=_vocab_size(reader, arch),
        file_type=FILE_TYPES.get(int(ftype), f"type {ftype}") if ftype is not None else "unknown",
        n_params=n_params,
        has_chat_template=reader.fields.get("tokenizer.chat_template") is not None,
    )


def _vocab_size(reader: Any, arch: str) -> int:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        return len(tokens.data)  # one index per array element; avoids decoding every token string
    return int(_field(reader, f"{arch}.vocab_size", 0) or 0)


def read_gguf(path: Path) -> GGUFInfo:
    """Header facts of a GGUF file; raises :class:`GGUFError` with a reason a person can act on."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise GGUFError(f"model file {path} does not exist") from None
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
