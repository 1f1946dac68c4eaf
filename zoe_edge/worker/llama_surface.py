"""The parts of llama-cpp-python zoe-edge relies on, by name; pure data, imports nothing of it.

:func:`zoe_edge.worker.llama_compat.check` looks each one up in the installed release (and
re-exports :data:`REQUIRED`); :class:`zoe_edge.worker.llama_compat.Model` checks the instance
attributes on a loaded model. Kept apart so that module stays about the calls themselves.
"""

from __future__ import annotations

# module -> attributes (dotted for class members) that zoe-edge calls; instance attributes of a
# loaded model cannot be seen without one and are checked in Model.__init__
REQUIRED: dict[str, tuple[str, ...]] = {
    "llama_cpp": (
        "Llama",
        "Llama.generate",
        "Llama.tokenize",
        "Llama.set_seed",
        "Llama.n_ctx",
        "Llama.token_bos",
        "Llama.token_eos",
        "Llama.close",
        "Llama.ctx",
        "Llama._input_ids",
        "LLAMA_DEFAULT_SEED",
        "GGML_TYPE_Q8_0",
        "GGML_TYPE_Q4_0",
        "llama_log_callback",
        "llama_log_set",
        "ggml_abort_callback",
        "llama_set_abort_callback",
        "llama_sampler_init_grammar",
        "llama_sampler_free",
        "llama_vocab_is_eog",
        "llama_state_seq_get_size",
        "llama_state_seq_get_data",
        "llama_state_seq_set_data",
        "llama_supports_gpu_offload",
        "Llama.embed",
        "Llama.n_embd",
        "Llama.pooling_type",
        "llama_set_embeddings",
        "LLAMA_POOLING_TYPE_UNSPECIFIED",
        "LLAMA_POOLING_TYPE_NONE",
        "LLAMA_POOLING_TYPE_MEAN",
        "LLAMA_POOLING_TYPE_CLS",
        "LLAMA_POOLING_TYPE_LAST",
    ),
    "llama_cpp._internals": (
        "LlamaModel.detokenize",
        "LlamaModel.add_bos_token",
        "LlamaModel.n_ctx_train",
        "LlamaModel.n_params",
        "LlamaModel.size",
        "LlamaContext.kv_cache_seq_rm",
    ),
    "llama_cpp._logger": ("llama_log_callback",),
    "llama_cpp.llama_chat_format": ("Jinja2ChatFormatter", "Jinja2ChatFormatter.IgnoreGenerationTags"),
    "llama_cpp.llama_grammar": (
        "LlamaGrammar.from_string",
        "JSON_GBNF",
        "SchemaConverter",
        "SchemaConverter._add_rule",
        "SchemaConverter._add_primitive",
        "SchemaConverter.format_grammar",
        "PRIMITIVE_RULES",
        "RESERVED_NAMES",
        "STRING_FORMAT_RULES",
        "_build_repetition",
    ),
}
MODEL_ATTRIBUTES = ("_model", "_ctx", "n_tokens", "input_ids", "_requires_eval", "metadata", "context_params")
# what generate keeps beside the KV cells and a nested generate replaces (save_live, restore_live)
LIVE_ATTRIBUTES = ("_sampler", "_mirostat_mu", "_seed")
