"""Everything zoe-edge uses of llama-cpp-python, and the only module that imports it.

llama-cpp-python changes its low-level surface between patch releases (the KV-cache calls moved
to ``llama_memory_*``, the vocabulary got its own handle), and the engine leans on private parts
of ``Llama`` (its context, its token buffer) to count cached tokens and to swap KV snapshots. With
all of that here, a new release is checked in one place: :func:`check` names the version and
every attribute we need that it lacks, and the worker refuses to start on a mismatch instead of
failing in the middle of a request.

Nothing here imports ``llama_cpp`` at module level: importing it loads libllama, which the daemon
process must never do, and :func:`check` must work when the import itself is what is broken.
"""

from __future__ import annotations

import collections
import ctypes
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from zoe_edge.worker.compat_range import DISTRIBUTION, SUPPORTED, Compatibility, in_supported_range, version_tuple
from zoe_edge.worker.llama_surface import LIVE_ATTRIBUTES, MODEL_ATTRIBUTES, REQUIRED

if TYPE_CHECKING:
    import llama_cpp
    from llama_cpp.llama_grammar import PRIMITIVE_RULES as PRIMITIVE_RULES
    from llama_cpp.llama_grammar import RESERVED_NAMES as RESERVED_NAMES
    from llama_cpp.llama_grammar import STRING_FORMAT_RULES as STRING_FORMAT_RULES
    from llama_cpp.llama_grammar import LlamaGrammar
    from llama_cpp.llama_grammar import SchemaConverter as SchemaConverter
    from llama_cpp.llama_grammar import _build_repetition as build_repetition

__all__ = [
    "DISTRIBUTION",
    "PRIMITIVE_RULES",
    "REQUIRED",
    "RESERVED_NAMES",
    "SAMPLING_DEFAULTS",
    "STRING_FORMAT_RULES",
    "SUPPORTED",
    "Compatibility",
    "LiveState",
    "LlamaLog",
    "Model",
    "SamplingParams",
    "SchemaConverter",
    "build_repetition",
    "chat_formatter",
    "check",
    "generation_tags_extension",
    "in_supported_range",
    "json_gbnf",
    "supports_gpu_offload",
    "version_tuple",
]

# --- compatibility -------------------------------------------------------------------------------


def _lookup(module: Any, dotted: str) -> bool:
    target = module
    for part in dotted.split("."):
        try:
            target = getattr(target, part)
        except Exception:  # a property or lazy attribute may raise anything
            return False
    return True


def check() -> Compatibility:
    """The installed llama-cpp-python against :data:`SUPPORTED` and :data:`REQUIRED` (imports it)."""
    try:
        version: str | None = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = None
    missing: list[str] = []
    error: str | None = None
    for name, attributes in REQUIRED.items():
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # ImportError, or OSError when libllama itself will not load
            missing.append(name)
            error = error or f"{type(exc).__name__}: {exc}"
            continue
        if name == "llama_cpp" and version is None:
            # a source checkout on sys.path has no distribution metadata, only its __version__
            version = getattr(module, "__version__", None)
        missing += [f"{name}.{a}" for a in attributes if not _lookup(module, a)]
    return Compatibility(version, version is not None and in_supported_range(version), tuple(missing), error)


def supports_gpu_offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


# --- upstream pieces used as they are ------------------------------------------------------------

_GRAMMAR_NAMES = {
    "PRIMITIVE_RULES": "PRIMITIVE_RULES",
    "RESERVED_NAMES": "RESERVED_NAMES",
    "STRING_FORMAT_RULES": "STRING_FORMAT_RULES",
    "SchemaConverter": "SchemaConverter",
    "build_repetition": "_build_repetition",
}


def __getattr__(name: str) -> Any:
    """The JSON-schema converter pieces of ``llama_cpp.llama_grammar``, imported on first use.

    Our GBNF converter subclasses upstream's at import time; resolving the names here keeps this
    module importable (for :func:`check`) when llama-cpp-python is missing or broken.
    """
    upstream = _GRAMMAR_NAMES.get(name)
    if upstream is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from llama_cpp import llama_grammar

    return getattr(llama_grammar, upstream)


def json_gbnf() -> str:
    """Upstream's grammar for any JSON value (``response_format: json_object``)."""
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF


def chat_formatter(template: str, eos_token: str, bos_token: str) -> Any:
    """llama-cpp-python's Jinja chat formatter: renders ``messages=`` into prompt and stop strings."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)


def generation_tags_extension() -> Any:
    """The jinja extension upstream's formatter adds so that ``{% generation %}`` tags parse."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter.IgnoreGenerationTags


class LlamaLog:
    """Keeps llama.cpp's recent warnings and errors, which ``verbose=False`` would send to /dev/null.

    A failed load then says *why* ("unknown model architecture: ...") instead of llama-cpp-python's
    generic "Failed to load model from file".
    """

    def __init__(self) -> None:
        import llama_cpp

        self.lines: collections.deque[str] = collections.deque(maxlen=20)
        self._keep = False

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            # ggml_log_level: 3 = warn, 4 = error, 5 = continuation of the previous line
            self._keep = level in (3, 4) or (level == 5 and self._keep)
            if self._keep:
                line = text.decode("utf-8", errors="replace").strip()
                if line:
                    self.lines.append(line)

        self._callback = callback  # a ctypes callback must outlive its registration
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    def detach(self) -> None:
        """Hand logging back to llama-cpp-python's own callback (ours is about to go away)."""
        import llama_cpp
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def recent(self, n: int = 3) -> str:
        return " | ".join(list(self.lines)[-n:])


# --- one loaded model -----------------------------------------------------------------------------

KVCacheType = Literal["f16", "q8_0", "q4_0"]
EmbeddingMode = Literal["none", "only", "also"]


@dataclass(frozen=True)
class SamplingParams:
    """Arguments of ``Llama.generate``; the defaults are its own, for a knob nobody set."""

    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


SAMPLING_DEFAULTS = SamplingParams()


@dataclass(frozen=True)
class LiveState:
    """Sequence 0 while ``generate`` is parked at a yield: its KV cells and what ``Llama`` keeps beside them."""

    tokens: tuple[int, ...]  # evaluated so far; the token just yielded is not among them yet
    data: ctypes.Array[ctypes.c_uint8]
    size: int
    sampler: Any  # generate's chain (RNG, grammar, penalty history): a nested generate replaces it
    mirostat_mu: Any
    seed: int  # a later pass of the same request builds its sampler from it


class Model:
    """One ``llama_cpp.Llama``: the calls the engine and the prefix cache make, and nothing more."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        import llama_cpp

        lacking = [a for a in (*MODEL_ATTRIBUTES, *LIVE_ATTRIBUTES) if not hasattr(llm, a)]
        if not lacking and not hasattr(llm._model, "vocab"):
            lacking.append("_model.vocab")
        if lacking:
            llm.close()
            raise RuntimeError(
                f"{DISTRIBUTION} {getattr(llama_cpp, '__version__', '?')}: a loaded Llama lacks {', '.join(lacking)}"
            )
        self._llm = llm
        self._vocab = llm._model.vocab
        # bound once: the decoding loop calls these for every token
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._detokenize = llm._model.detokenize
        self._abort_check: Callable[[], bool] | None = None

        @llama_cpp.ggml_abort_callback  # type: ignore[untyped-decorator]
        def abort(_data: Any) -> bool:
            check = self._abort_check
            return bool(check is not None and check())

        self._abort_callback = abort  # a ctypes callback must outlive its registration

    @classmethod
    def load(
        cls,
        path: str,
        *,
        n_ctx: int,
        n_batch: int,
        n_threads: int,
        n_gpu_layers: int,
        kv_cache_type: KVCacheType,
        embeddings: EmbeddingMode = "none",
        pooling: Literal["mean", "cls", "last"] | None = None,
    ) -> Model:
        import llama_cpp  # imported here so the daemon process never loads libllama

        kv_type = {"f16": None, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}[kv_cache_type]
        for pool in (pooling or "unspecified", "mean"):
            llm = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_batch=n_batch,
                # a non-causal encoder must see each input in one micro-batch
                n_ubatch=n_batch if embeddings == "only" else 512,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=n_gpu_layers,
                type_k=kv_type,
                type_v=kv_type,
                # llama.cpp can only quantise the V cache with flash attention on
                flash_attn=kv_type is not None,
                embedding=embeddings == "only",
                pooling_type=getattr(llama_cpp, f"LLAMA_POOLING_TYPE_{pool.upper()}"),
                verbose=False,
            )
            # a causal LM's GGUF names no pooling, and unpooled it would give one vector per token
            if embeddings == "none" or int(llm.pooling_type()) != llama_cpp.LLAMA_POOLING_TYPE_NONE:
                break
            llm.close()
        return cls(llm)

    def close(self) -> None:
        self.set_abort(None)
        self._llm.close()

    # --- the model -------------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._llm.metadata)

    def n_ctx(self) -> int:
        return int(self._llm.n_ctx())

    def n_ctx_train(self) -> int:
        return int(self._llm._model.n_ctx_train())

    def n_params(self) -> int:
        return int(self._llm._model.n_params())

    def size_bytes(self) -> int:
        return int(self._llm._model.size())

    def n_embd(self) -> int:
        return int(self._llm.n_embd())

    def embed(self, texts: list[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        """Pooled, L2-normalised vectors and the tokens read (``truncate``: cut each text to ``n_batch``).

        The KV cache is empty afterwards. A generative context computes embeddings only while they
        are switched on, so they are for this call alone.
        """
        import llama_cpp

        llm = self._llm
        switch = not llm.context_params.embeddings
        if switch:
            llama_cpp.llama_set_embeddings(llm.ctx, True)
            llm.context_params.embeddings = True  # Llama.embed checks its own copy of the flag
        try:
            vectors, count = llm.embed(texts, normalize=True, truncate=truncate, return_count=True)
        finally:
            if switch:
                llama_cpp.llama_set_embeddings(llm.ctx, False)
                llm.context_params.embeddings = False
            llm.n_tokens = 0  # embed cleared the KV cells
        return [list(v) for v in vectors], int(count)

    def token_bos(self) -> int:
        return int(self._llm.token_bos())

    def token_eos(self) -> int:
        return int(self._llm.token_eos())

    def add_bos_token(self) -> bool:
        return bool(self._llm._model.add_bos_token())

    def tokenize(self, text: bytes, *, add_bos: bool, special: bool) -> list[int]:
        return self._llm.tokenize(text, add_bos=add_bos, special=special)

    def token_bytes(self, token: int, *, special: bool) -> bytes:
        return self._detokenize([token], special=special)

    def is_eog(self, token: int) -> bool:
        return bool(self._is_eog(self._vocab, token))

    # --- generation -----------------------------------------------------------------------------

    def compile_grammar(self, gbnf: str) -> LlamaGrammar | None:
        """The grammar, or ``None`` when llama.cpp rejects it (it would reach the sampler as NULL)."""
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        probe = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
        if not probe:
            return None
        llama_cpp.llama_sampler_free(probe)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def set_seed(self, seed: int | None) -> None:
        """``None``: llama.cpp's own default seed."""
        import llama_cpp

        self._llm.set_seed(seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)

    def generate(self, tokens: Sequence[int], params: SamplingParams, grammar: LlamaGrammar | None) -> Iterator[int]:
        """Tokens sampled after ``tokens``, reusing the KV prefix they share with the cache."""
        return self._llm.generate(
            tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temp,
            repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            grammar=grammar,
        )

    def set_abort(self, check: Callable[[], bool] | None) -> None:
        """Let ``check`` stop llama.cpp between graph nodes (``None``: never)."""
        import llama_cpp

        self._abort_check = check
        callback = self._abort_callback if check is not None else llama_cpp.ggml_abort_callback()
        llama_cpp.llama_set_abort_callback(self._llm.ctx, callback, None)

    # --- the KV cache of sequence 0 --------------------------------------------------------------

    def cached_tokens(self) -> list[int]:
        """The tokens the KV cache holds, in order (what ``generate`` compares a prompt with)."""
        return list(self._llm._input_ids.tolist())

    def kv_remove_from(self, position: int) -> None:
        """Drop the KV cells from ``position`` on, in every sequence."""
        self._llm._ctx.kv_cache_seq_rm(-1, position, -1)

    def forget_tokens(self) -> None:
        """``generate`` will treat the cache as empty (after the cells were removed)."""
        self._llm.n_tokens = 0

    def adopt_tokens(self, tokens: Sequence[int]) -> None:
        """The KV cells now hold ``tokens`` (a restored snapshot); their logits are stale."""
        n = len(tokens)
        self._llm.input_ids[:n] = tokens
        self._llm.n_tokens = n
        self._llm._requires_eval = True  # generate re-evaluates at least one token

    def seq_state_size(self) -> int:
        import llama_cpp

        return int(llama_cpp.llama_state_seq_get_size(self._llm.ctx, 0))

    def seq_state_save(self, size: int) -> tuple[ctypes.Array[ctypes.c_uint8], int]:
        """A copy of sequence 0's KV cells in a new buffer of ``size`` bytes, and the bytes written."""
        import llama_cpp

        data = (ctypes.c_uint8 * size)()
        return data, int(llama_cpp.llama_state_seq_get_data(self._llm.ctx, data, size, 0))

    def seq_state_load(self, data: ctypes.Array[ctypes.c_uint8], size: int) -> int:
        """Put a :meth:`seq_state_save` copy back into sequence 0; the bytes read (``size`` when it worked)."""
        import llama_cpp

        return int(llama_cpp.llama_state_seq_set_data(self._llm.ctx, data, size, 0))

    def save_live(self) -> LiveState:
        """Copy the live sequence out (``generate`` parked at a yield) for :meth:`restore_live`."""
        llm = self._llm
        tokens = self.cached_tokens()
        self.kv_remove_from(len(tokens))  # cells past n_tokens (a batch aborted mid-way) are not ours
        data, written = self.seq_state_save(self.seq_state_size())
        if written <= 0:
            raise RuntimeError("llama.cpp could not copy the sequence state out")
        return LiveState(tuple(tokens), data, written, llm._sampler, llm._mirostat_mu, llm._seed)

    def restore_live(self, state: LiveState) -> None:
        """Put a :meth:`save_live` copy back: the parked ``generate`` goes on as if it never stopped.

        Its next step evaluates the token it yielded, which refreshes the logits, so none are kept.
        """
        self.kv_remove_from(0)
        self.forget_tokens()
        if self.seq_state_load(state.data, state.size) != state.size:
            self.kv_remove_from(0)
            raise RuntimeError("llama.cpp rejected the saved sequence state")
        self.adopt_tokens(state.tokens)
        llm = self._llm
        llm._sampler, llm._mirostat_mu, llm._seed = state.sampler, state.mirostat_mu, state.seed
