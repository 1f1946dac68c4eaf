"""Embeddings from the loaded model, inside the worker: limits, the prefix cache, timing.

A model loaded with ``embeddings: true`` has an embedding context and serves nothing else; one
with ``embeddings: also`` is a generative context that switches embeddings on for the call, which
overwrites its KV cache (a long chat prefix is saved to the prefix cache first, as for any request
that would overwrite it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from zoe_edge.worker.engine import RequestRejected
from zoe_edge.worker.protocol import Embedded

if TYPE_CHECKING:
    from zoe_edge.worker.engine import Engine


def embed(engine: Engine, texts: list[str], truncate: bool) -> Embedded:
    """One vector per text, in order; :class:`RequestRejected` for what this model cannot embed."""
    spec = engine.spec
    if spec.embeddings == "none":
        raise RequestRejected(
            f"model {spec.name!r} is loaded for generation only; give its models.yaml entry "
            "'embeddings: true' (an embeddings model) or 'embeddings: also'"
        )
    llm = engine.llm
    # Llama.embed decodes each input whole in one batch
    limit = min(spec.n_batch, llm.n_ctx())
    for i, text in enumerate(texts):
        n = len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))
        if n == 0:
            raise RequestRejected(f"input[{i}] has no tokens to embed")
        if n > limit and not truncate:
            raise RequestRejected(
                # "but the model's context is": the wording of a prompt over the context, for the same fault
                f"input[{i}] has {n} tokens but the model's context is {limit} tokens per embedded input "
                "(shorten it, or raise n_batch and n_ctx in models.yaml)",
                "context_length_exceeded",
            )
    if spec.embeddings == "also":
        engine.prefix_cache.prepare([])
        engine.prefix_cache.note_prompt(0)
    started = time.perf_counter()
    vectors, count = llm.embed(texts, truncate=truncate)
    return Embedded(
        vectors=vectors,
        prompt_tokens=count,
        n_embd=llm.n_embd(),
        embed_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )
