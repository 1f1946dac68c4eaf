"""The generation loop around one ``llama_cpp.Llama``; runs inside the worker process only.

We drive ``Llama.generate`` token by token instead of ``create_completion`` so that we control
what matters on a small board: cancellation between any two tokens, exact token counts, stop
strings with O(1) work per token (llama-cpp-python re-detokenises the whole completion each
step), and wall-clock timings per phase.
"""

from __future__ import annotations

import atexit
import codecs
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from zoe_edge.canonical import (
    ErrorEvent,
    Event,
    Finish,
    FinishReason,
    GenerationRequest,
    OutputConstraint,
    Sampling,
    TextDelta,
    Timings,
    ToolCall,
    Usage,
)
from zoe_edge.worker import llama_compat, tools
from zoe_edge.worker.grammar import InvalidSchema, schema_grammar
from zoe_edge.worker.llama_compat import SAMPLING_DEFAULTS, LlamaLog, Model, SamplingParams
from zoe_edge.worker.prefix import PrefixCache
from zoe_edge.worker.protocol import LoadSpec, ModelInfo
from zoe_edge.worker.suspension import Pause
from zoe_edge.worker.templates import bundled_template

log = logging.getLogger("zoe_edge.worker")


class RequestRejected(Exception):
    """The request cannot run on this model (bad grammar, prompt longer than the context)."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


def sampling_params(s: Sampling) -> SamplingParams:
    """A request's sampling (the registry's defaults already merged in) with llama.cpp's own for the rest."""
    d = SAMPLING_DEFAULTS
    return SamplingParams(
        temp=s.temperature if s.temperature is not None else d.temp,
        top_k=s.top_k if s.top_k is not None else d.top_k,
        top_p=s.top_p if s.top_p is not None else d.top_p,
        min_p=s.min_p if s.min_p is not None else d.min_p,
        repeat_penalty=s.repeat_penalty if s.repeat_penalty is not None else d.repeat_penalty,
        frequency_penalty=s.frequency_penalty or d.frequency_penalty,
        presence_penalty=s.presence_penalty or d.presence_penalty,
    )


def stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still grow into a stop string."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    return keep


@dataclass
class _Pass:
    """What one decoding pass ended with; filled in while its text is consumed."""

    reason: FinishReason = "length"
    produced: int = 0
    first_token_at: float | None = None
    text: str = ""  # everything yielded so far
    triggered: bool = False  # stopped where a tool call begins


class Engine:
    """Owns one loaded model. Not thread-safe: the worker serves one request at a time."""

    def __init__(self, spec: LoadSpec, llama_log: LlamaLog | None = None) -> None:
        self.spec = spec
        started = time.perf_counter()
        try:
            self.llm = Model.load(
                spec.path,
                n_ctx=spec.n_ctx,
                n_batch=spec.n_batch,
                n_threads=spec.n_threads,
                n_gpu_layers=spec.n_gpu_layers,
                kv_cache_type=spec.kv_cache_type,
                embeddings=spec.embeddings,
                pooling=spec.pooling,
            )
        except Exception as exc:
            detail = llama_log.recent() if llama_log else ""
            raise RuntimeError(f"{exc}{'; llama.cpp says: ' + detail if detail else ''}") from None
        self.load_ms = (time.perf_counter() - started) * 1000.0
        self._llama_log = llama_log
        # free llama.cpp while our ctypes callbacks still exist: at interpreter teardown they may
        # be collected first, and llama.cpp logging through a freed callback crashes the process
        atexit.register(self.close)
        self._formatter, self.template_source, template = self._make_formatter(spec.chat_format)
        self.prefix_cache = PrefixCache(self.llm, spec.prefix_cache_bytes, spec.prefix_cache_min_tokens)
        try:
            self.tool_setup = tools.resolve_setup(spec.tool_format, template)
        except Exception as exc:  # a template jinja cannot even parse still serves plain chat
            self.tool_setup = tools.ToolSetup("generic", False, f"chat template not inspectable ({exc})")
        log.info("%s: tool calls: %s (%s)", spec.name, self.tool_setup.format, self.tool_setup.reason)

    def close(self) -> None:
        """Free the model and context now (idempotent); the worker calls this on its way out."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        llm.close()
        del self.llm
        if self._llama_log is not None:
            self._llama_log.detach()

    def info(self, pid: int) -> ModelInfo:
        model = self.llm
        return ModelInfo(
            name=self.spec.name,
            n_ctx=model.n_ctx(),
            n_ctx_train=model.n_ctx_train(),
            n_params=model.n_params(),
            size_bytes=model.size_bytes(),
            n_gpu_layers=self.spec.n_gpu_layers,
            chat_template_source=self.template_source,
            tool_format=f"{self.tool_setup.format} ({self.tool_setup.reason})",
            load_ms=round(self.load_ms, 3),
            pid=pid,
        )

    def _make_formatter(self, chat_format: str) -> tuple[Any, str, str]:
        if chat_format == "auto":
            template = self.llm.metadata.get("tokenizer.chat_template")
            source = "gguf metadata"
            if not template:
                template, source = bundled_template("chatml"), "chatml (the GGUF has no chat template)"
        else:
            template, source = bundled_template(chat_format), f"bundled {chat_format}"
            if template is None:
                raise ValueError(f"unknown chat_format {chat_format!r}: use 'auto' or a bundled template name")
        assert template is not None
        eos = self._token_text(self.llm.token_eos())
        bos = self._token_text(self.llm.token_bos())
        return llama_compat.chat_formatter(template, eos, bos), source, template

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.token_bytes(token, special=True).decode("utf-8", errors="replace")

    # --- prompt ------------------------------------------------------------------------------

    def prompt_tokens(self, req: GenerationRequest) -> tuple[list[int], list[str]]:
        """Tokens to evaluate and the stop strings the chat template adds."""
        if req.messages is not None:
            offered = req.tools if req.uses_tools else []
            messages = tools.chat_messages(req.messages, offered, req.tool_choice, self.tool_setup)
            extra: dict[str, Any] = (
                {"tools": [tools.openai_tool(t) for t in offered]} if offered and self.tool_setup.native else {}
            )
            if req.think is False:
                # Qwen3-style templates read it and open an empty think block; the others ignore the variable
                extra["enable_thinking"] = False
            try:
                rendered = self._formatter(messages=messages, **extra)
            except Exception as exc:  # jinja raise_exception() and template errors
                raise RequestRejected(f"the model's chat template rejected the messages: {exc}") from None
            stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
            add_bos = not rendered.added_special and self.llm.add_bos_token()
            tokens = self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=add_bos, special=True)
            return tokens, [s for s in stops if s]
        text = req.prompt or ""
        add_bos = self.llm.add_bos_token()
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if not tokens:
            tokens = [self.llm.token_bos()]
        return tokens, []

    def _grammar(self, gbnf: str | None) -> Any:
        """A grammar llama.cpp accepted; a rejected one would reach the sampler as NULL and crash it."""
        if gbnf is None:
            return None
        grammar = self.llm.compile_grammar(gbnf)
        if grammar is None:
            raise RequestRejected("llama.cpp rejected the grammar made from the JSON schema", "invalid_schema")
        return grammar

    def _constraint_gbnf(self, constraint: OutputConstraint | None) -> str | None:
        """``response_format``: the same schema-to-grammar path as tool arguments."""
        if constraint is None:
            return None
        if constraint.kind == "json":
            return llama_compat.json_gbnf()
        return self._schema_gbnf(lambda: schema_grammar(constraint.json_schema or {}))

    def _call_gbnf(self, req: GenerationRequest) -> str:
        only = req.tool_choice.name
        fmt = self.tool_setup.format
        return self._schema_gbnf(lambda: tools.call_grammar(req.call_tools, fmt, req.parallel_tool_calls, only))

    @staticmethod
    def _schema_gbnf(build: Callable[[], str]) -> str:
        """The grammar for a request's schemas. Every valid JSON Schema gets one (what it cannot
        enforce is logged and checked after); only a schema that is not one is a 400."""
        try:
            return build()
        except InvalidSchema as exc:
            raise RequestRejected(f"the JSON schema is not valid: {exc}", "invalid_schema") from None
        except Exception as exc:  # a bug in the converter: say so rather than fail the whole request blindly
            log.exception("cannot turn a JSON schema into a grammar")
            raise RequestRejected(f"cannot turn the JSON schema into a grammar: {exc}", "invalid_schema") from None

    def _cached_prefix(self, tokens: list[int]) -> int:
        """The KV prefix ``Llama.generate`` will reuse for these tokens (same rule as its own)."""
        cached = self.llm.cached_tokens()
        n_cached = len(cached)
        shared = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            shared += 1
        if shared == len(tokens) and n_cached != len(tokens):
            shared -= 1  # the last prompt token is re-evaluated to refresh the logits
        return max(shared, 0)

    # --- generation --------------------------------------------------------------------------

    def generate(
        self,
        req: GenerationRequest,
        cancelled: Callable[[], bool],
        checkpoint: Callable[[], Pause | None] | None = None,
    ) -> Iterator[Event]:
        """Yield canonical events; checks ``cancelled`` and calls ``checkpoint`` between tokens.

        ``checkpoint`` may suspend the generation there (:class:`~zoe_edge.worker.suspension.Suspender`)
        and serve other requests on this engine; what it reports is left out of ``predicted_ms``.
        """
        try:
            tokens, template_stops = self.prompt_tokens(req)
            if req.uses_tools:
                grammar = None
                call_grammar = self._grammar(self._call_gbnf(req))
            else:
                grammar = self._grammar(self._constraint_gbnf(req.constraint))
                call_grammar = None
        except RequestRejected as exc:
            yield ErrorEvent(str(exc), exc.code, 400)
            return
        n_ctx = self.llm.n_ctx()
        room = n_ctx - len(tokens)
        if room < 1:
            yield ErrorEvent(
                f"the prompt has {len(tokens)} tokens but the model's context is {n_ctx}; "
                "shorten the conversation or raise n_ctx in models.yaml",
                "context_length_exceeded",
                400,
            )
            return
        max_tokens = min(req.max_tokens or room, room)
        s = req.sampling
        self.llm.set_seed(s.seed)
        started = time.perf_counter()  # a snapshot save or restore counts as prompt time
        self.prefix_cache.prepare(tokens)
        self.prefix_cache.note_prompt(len(tokens))
        cached = self._cached_prefix(tokens)
        pauses: list[Pause] = []

        def pause() -> None:
            assert checkpoint is not None
            if (paused := checkpoint()) is not None:
                pauses.append(paused)

        hook = pause if checkpoint is not None else None

        def finish(reason: FinishReason, produced: int, first_token_at: float | None) -> Finish:
            ended = time.perf_counter()
            first = first_token_at or ended
            paused_ms = sum(p.paused_ms for p in pauses)  # every pause comes after the first token
            return Finish(
                reason,
                Usage(prompt_tokens=len(tokens), completion_tokens=produced, cached_tokens=cached),
                Timings(
                    prompt_ms=(first - started) * 1000.0,
                    predicted_ms=max((ended - first) * 1000.0 - paused_ms, 0.0),
                    suspensions=len(pauses),
                    paused_ms=paused_ms,
                    suspend_cost_ms=sum(p.cost_ms for p in pauses),
                ),
            )

        stops = [*req.stop, *template_stops]
        if req.uses_tools and not req.tool_grammar:
            yield from self._free_calls(tokens, stops, max_tokens, s, cancelled, finish, hook)
            return
        if call_grammar is None:
            run = _Pass()
            for piece in self._decode(tokens, grammar, stops, max_tokens, s, cancelled, run, checkpoint=hook):
                yield TextDelta(piece)
            yield finish(run.reason, run.produced, run.first_token_at)
            return

        call_tokens = tokens
        produced = 0
        first_token_at: float | None = None
        if req.tool_choice.mode == "auto":
            # free text until a call begins; then the call is decoded again under the grammar,
            # from the prompt plus the text before it (llama.cpp keeps the shared KV prefix)
            run = _Pass()
            triggers = tools.triggers(self.tool_setup.format)
            pieces = self._decode(tokens, None, stops, max_tokens, s, cancelled, run, triggers, tools.MARKERS, hook)
            for piece in pieces:
                yield TextDelta(piece)
            if not run.triggered:
                yield finish(run.reason, run.produced, run.first_token_at)
                return
            first_token_at = run.first_token_at
            if run.text:
                before = self.llm.tokenize(run.text.encode("utf-8"), add_bos=False, special=False)
                call_tokens = tokens + before
                # usage counts what the answer is made of: the text before the call, then the call
                produced = len(before)
        budget = min(max_tokens - produced, n_ctx - len(call_tokens))
        call_run = _Pass()
        if budget >= 1:
            # the request's own stop strings are not applied: they could cut a call's JSON in half
            pieces = self._decode(
                call_tokens, call_grammar, template_stops, budget, s, cancelled, call_run, None, tools.MARKERS, hook
            )
            raw = "".join(pieces)
        else:
            raw = ""
        produced += call_run.produced
        first_token_at = first_token_at or call_run.first_token_at
        if call_run.reason == "cancelled":
            yield finish("cancelled", produced, first_token_at)
            return
        parsed = tools.parse(raw, self.tool_setup.format)
        problems = tools.call_problems(parsed.calls, req.tools, req.tool_choice.name) if parsed else ["no call"]
        if parsed is None or problems:
            # only a call cut off by max_tokens should get here; it goes out as the text it is
            log.warning("tool call output is not a valid call (%s): %.200r", "; ".join(problems), raw)
            if raw:
                yield TextDelta(raw)
            yield finish(call_run.reason, produced, first_token_at)
            return
        if parsed.content:
            yield TextDelta(parsed.content)
        for index, call in enumerate(parsed.calls):
            yield ToolCall(index, tools.new_call_id(), call.name, call.arguments)
        yield finish("tool_calls", produced, first_token_at)

    def _free_calls(
        self,
        tokens: list[int],
        stops: list[str],
        max_tokens: int,
        s: Sampling,
        cancelled: Callable[[], bool],
        finish: Callable[[FinishReason, int, float | None], Finish],
        checkpoint: Callable[[], None] | None,
    ) -> Iterator[Event]:
        """``tool_grammar: false``: decode freely, then parse calls with the same parsers, unvalidated."""
        run = _Pass()
        pieces = self._decode(tokens, None, stops, max_tokens, s, cancelled, run, None, tools.MARKERS, checkpoint)
        text = "".join(pieces)
        parsed = tools.parse(text, self.tool_setup.format) if run.reason != "cancelled" else None
        if parsed is None:
            if text:
                yield TextDelta(text)
            yield finish(run.reason, run.produced, run.first_token_at)
            return
        if parsed.content:
            yield TextDelta(parsed.content)
        for index, call in enumerate(parsed.calls):
            yield ToolCall(index, tools.new_call_id(), call.name, call.arguments)
        yield finish("tool_calls", run.produced, run.first_token_at)

    def _abortable(self, stream: Iterator[int], cancelled: Callable[[], bool], run: _Pass) -> Iterator[int]:
        """Tokens from ``stream``; a cancel during prompt processing aborts llama.cpp mid-batch.

        Processing a Home Assistant prompt takes seconds on a board; a client that gives up must
        free the model at once, not after the prompt. llama.cpp polls the callback between graph
        nodes, which costs a Python call each, so it is armed only until the first token: from
        then on the per-token check in the caller is enough.
        """
        self.llm.set_abort(cancelled)
        try:
            first = next(stream, None)
        except RuntimeError:
            if not cancelled():
                raise
            run.reason = "cancelled"
            return
        finally:
            self.llm.set_abort(None)
        if first is None:
            return
        yield first
        yield from stream

    def _decode(
        self,
        tokens: list[int],
        grammar: Any,
        stops: list[str],
        max_tokens: int,
        s: Sampling,
        cancelled: Callable[[], bool],
        run: _Pass,
        triggers: list[tools.Trigger] | None = None,
        keep_special: frozenset[str] = frozenset(),
        checkpoint: Callable[[], None] | None = None,
    ) -> Iterator[str]:
        """One decoding pass: yields text as it becomes final; ``run`` says how it ended."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""  # decoded text held back because it may be the start of a stop string or trigger
        is_eog = self.llm.is_eog
        detok = self.llm.token_bytes

        stream = self.llm.generate(tokens, sampling_params(s), grammar)
        for token in self._abortable(stream, cancelled, run):
            if run.first_token_at is None:
                run.first_token_at = time.perf_counter()
            if checkpoint is not None:
                # Llama.generate is parked at its yield: the one point where its state can be swapped out
                checkpoint()
            if cancelled():
                run.reason = "cancelled"
                break
            if is_eog(token):
                run.reason = "stop"
                break
            run.produced += 1
            piece = detok(token, special=False)
            if not piece and keep_special:
                # call markers can be control tokens ([TOOL_CALLS], <|python_tag|>), which plain
                # detokenisation drops; keep those so triggers and parsers see them
                marker = detok(token, special=True).decode("utf-8", errors="replace")
                if marker in keep_special:
                    piece = marker.encode("utf-8")
            pending += decoder.decode(piece)
            hit = min((i for i in (pending.find(st) for st in stops) if i >= 0), default=-1) if stops else -1
            if hit >= 0:
                pending = pending[:hit]
                run.reason = "stop"
                break
            if triggers:
                at = tools.find_trigger(run.text + pending, triggers)
                if at is not None:
                    before = (run.text + pending)[:at]
                    if before.strip():
                        tail = before[len(run.text) :]
                        if tail:
                            run.text += tail
                            yield tail
                    else:
                        run.text = ""  # blank lines before a call are not content
                    run.triggered = True
                    run.reason = "tool_calls"
                    return
            keep = stop_holdback(pending, stops) if stops else 0
            if triggers:
                keep = max(keep, tools.trigger_holdback(run.text + pending, triggers))
            if len(pending) > keep:
                cut = len(pending) - keep
                run.text += pending[:cut]
                yield pending[:cut]
                pending = pending[cut:]
            if run.produced >= max_tokens:
                break

        if run.reason != "cancelled":
            pending += decoder.decode(b"", final=True)
            if pending:
                run.text += pending
                yield pending
