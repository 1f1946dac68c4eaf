"""What a finished generation teaches admission: this board's speeds for one model.

Admission predicts a newcomer's wait (:func:`.scheduler.predict_wait`) from a prompt's length,
which it has to estimate before the worker tokenises anything, and from per-model speeds that
each finished generation updates here. Pure functions over :class:`~.records.ModelStats`.
"""

from __future__ import annotations

from zoe_edge.canonical import Finish, GenerationRequest
from zoe_edge.supervisor import scheduler
from zoe_edge.supervisor.records import ModelStats

# tokens per character of prompt text until a model's own ratio is measured (English text on BPE vocabularies)
TOKENS_PER_CHAR = 0.3
# below this many tokens or characters a sample says more about overheads than about speed
MIN_PROMPT_SAMPLE = 8


def prompt_chars(req: GenerationRequest) -> int:
    """The text a prompt is made of, in characters: messages, raw prompt and the tools offered."""
    chars = len(req.prompt or "")
    for message in req.messages or ():
        chars += len(message.content)
        for call in message.tool_calls or ():
            chars += len(call.name) + len(str(call.arguments))
    for tool in req.tools if req.uses_tools else ():
        chars += len(tool.name) + len(tool.description) + len(str(tool.parameters))
    return chars


def prompt_tokens(stats: ModelStats | None, chars: int) -> int:
    """The prompt's length in tokens before the worker tokenises it, from this model's measured ratio."""
    per_char = stats.tokens_per_char if stats is not None and stats.tokens_per_char else TOKENS_PER_CHAR
    return int(chars * per_char)


def learn(stats: ModelStats, chars: int, finish: Finish, warm: bool) -> scheduler.Speed:
    """Fold one finished generation into ``stats``; the speeds admission uses from now on.

    ``warm``: not the first prompt of its worker, which also pays llama.cpp's first-batch set-up
    (ten times a warm prompt's time on SmolLM2), so it would teach a wrong prompt speed.
    """
    usage, timings = finish.usage, finish.timings
    if usage.completion_tokens > 1 and timings.predicted_ms > 0:
        stats.decode_rate.add(timings.predicted_ms / 1000.0, usage.completion_tokens - 1)
    evaluated = usage.prompt_tokens - usage.cached_tokens
    if warm and evaluated >= MIN_PROMPT_SAMPLE and timings.prompt_ms > 0:
        stats.prompt_fit.add(evaluated, timings.prompt_ms / 1000.0)
    if finish.reason != "cancelled":
        stats.completion_tokens = scheduler.ewma(stats.completion_tokens, float(usage.completion_tokens))
    if usage.prompt_tokens:
        stats.cached_share = scheduler.ewma(stats.cached_share, usage.cached_tokens / usage.prompt_tokens)
        if chars >= MIN_PROMPT_SAMPLE:
            stats.char_rate.add(usage.prompt_tokens, chars)
    return scheduler.Speed(
        stats.prompt_s_per_token,
        stats.decode_s_per_token,
        stats.completion_tokens,
        stats.cached_share or 0.0,
        stats.load_s,
        stats.prompt_overhead_s or 0.0,
    )
