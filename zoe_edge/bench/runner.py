"""Run the bench suites through the same supervisor and worker that serve traffic.

Every generation is a canonical :class:`GenerationRequest` given to
:meth:`zoe_edge.supervisor.Supervisor.generate`, so a score measures the worker's real prompt
rendering, tool prompting, call grammar and parsers. Greedy decoding (temperature 0) with a fixed
seed: the same model and build give the same answers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from zoe_edge.bench import ha
from zoe_edge.bench.assist_suite import assist_suite
from zoe_edge.bench.cases import hallucination_cases, tool_cases
from zoe_edge.bench.scoring import (
    Call,
    Estimate,
    GradedTool,
    grade_answer,
    grade_calls,
    hallucination_summary,
    percentile,
    tool_summary,
)
from zoe_edge.bench.suite import Answer, Progress, SuiteResult, _now, _request, ask, run_settings
from zoe_edge.canonical import (
    Message,
    Tool,
    ToolChoice,
)
from zoe_edge.config import Settings
from zoe_edge.registry import Registry
from zoe_edge.supervisor import Supervisor
from zoe_edge.worker import tools

log = logging.getLogger("zoe_edge.bench")

SUITES = ("latency", "hallucination", "tools", "assist")

HALLUCINATION_SYSTEM = (
    "Answer the question with a short answer only: a name, a number or a few words, on one line. "
    "If you do not know, or the question has no true answer, reply exactly: I don't know"
)
MEMORY_TEMPLATE = "Notes the household gave you:\n{notes}\n\nUsing only these notes, answer: {question}"
TOOLS: list[Tool] = [Tool.model_validate(t["function"]) for t in ha.TOOLS]
SCHEMAS = {t.name: t.parameters for t in TOOLS}


# --- latency ----------------------------------------------------------------------------------------


def _timing_ms(values: Sequence[float], name: str, out: dict[str, Estimate]) -> None:
    ms = [v * 1000.0 for v in values]
    out[name] = Estimate(round(percentile(ms, 50), 1), None, None, len(ms))
    out[name.removesuffix("_ms") + "_p95_ms"] = Estimate(round(percentile(ms, 95), 1), None, None, len(ms))


async def latency_suite(
    sup: Supervisor, model: str, quick: bool, progress: Progress, first_load: tuple[float, float] | None = None
) -> SuiteResult:
    """``first_load``: (wall s, llama.cpp s) of the load the run already made, counted as one sample."""
    reps = 1 if quick else 10
    loads = (0 if first_load else 1) if quick else 3
    max_tokens = 32 if quick else 64
    turns = ha.user_turns()
    system = ha.system_prompt()
    story = "Write a few sentences about a lighthouse keeper and the sea."
    total = loads + 1 + 4 * reps + 2
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        progress(model, "latency", done, total)

    # load time: from nothing loaded to ready, wall clock; llama.cpp's own load_ms is the cross-check
    load_wall: list[float] = [first_load[0]] if first_load else []
    load_llama: list[float] = [first_load[1]] if first_load else []
    for _ in range(loads):
        await sup.unload()
        started = time.perf_counter()
        await sup.load(model)
        load_wall.append(time.perf_counter() - started)
        if sup.info is not None:
            load_llama.append(sup.info.load_ms / 1000.0)
        step()

    def ha_messages(i: int, cold: bool) -> list[Message]:
        # a session line ahead of the prompt makes every token new to the KV cache (cold); without it
        # the system prompt is the cached prefix of the previous request (warm)
        head = f"Session {i}-{time.monotonic_ns()}.\n" if cold else ""
        return [Message(role="system", content=head + system), Message(role="user", content=turns[i % len(turns)])]

    def short_messages(i: int, cold: bool) -> list[Message]:
        head = f"({i}-{time.monotonic_ns()}) " if cold else ""
        return [Message(role="user", content=head + story)]

    # one discarded warm-up request after the load (first-use costs: allocations, page faults)
    await ask(sup, model, _request(model, short_messages(0, True), 8))
    step()
    series: dict[str, list[Answer]] = {}
    for key, make, cold in (
        ("ha_cold", ha_messages, True),
        ("ha_warm", ha_messages, False),
        ("short_cold", short_messages, True),
        ("short_warm", short_messages, False),
    ):
        answers = []
        # a warm series first fills the cache with its prefix (a discarded request); a cold one needs none
        for i in range(reps + (0 if cold else 1)):
            ans = await ask(sup, model, _request(model, make(i, cold), max_tokens))
            if ans.error:
                raise RuntimeError(f"{model}: latency request failed: {ans.error}")
            if cold or i > 0:
                answers.append(ans)
            step()
        series[key] = answers

    scores: dict[str, Estimate] = {}
    _timing_ms(load_wall, "load_ms", scores)
    if load_llama:
        scores["load_llama_ms"] = Estimate(round(percentile([v * 1000 for v in load_llama], 50), 1), None, None, 1)
    for key, answers in series.items():
        _timing_ms([a.ttft_s or a.total_s for a in answers], f"ttft_{key}_ms", scores)
    _timing_ms([a.total_s for a in series["ha_warm"]], "e2e_ms", scores)
    # throughput from wall clock: evaluated prompt tokens over time to first token, and tokens after
    # the first over the time after it; llama.cpp's counters (worker side) are the cross-check
    prompt_rates, gen_rates, prompt_llama, gen_llama = [], [], [], []
    for a in series["ha_cold"] + series["short_cold"]:
        assert a.finish is not None
        evaluated = a.finish.usage.prompt_tokens - a.finish.usage.cached_tokens
        if a.ttft_s:
            prompt_rates.append(evaluated / a.ttft_s)
        prompt_llama.append(a.finish.timings.per_second(a.finish.usage)["prompt_per_second"])
    for a in series["short_warm"] + series["short_cold"]:
        assert a.finish is not None
        n = a.finish.usage.completion_tokens
        if a.ttft_s is not None and n > 1 and a.total_s > a.ttft_s:
            gen_rates.append((n - 1) / (a.total_s - a.ttft_s))
        gen_llama.append(a.finish.timings.per_second(a.finish.usage)["predicted_per_second"])
    for name, values in (
        ("prompt_tps", prompt_rates),
        ("gen_tps", gen_rates),
        ("prompt_tps_llama", prompt_llama),
        ("gen_tps_llama", gen_llama),
    ):
        if values:
            scores[name] = Estimate(round(percentile(values, 50), 1), None, None, len(values))
    ha_tokens = series["ha_cold"][0].finish.usage.prompt_tokens if series["ha_cold"][0].finish else 0
    settings = run_settings(sup, model, quick) | {"repetitions": reps, "ha_prompt_tokens": ha_tokens}
    return SuiteResult(model, "latency", scores, settings, _now())


# --- hallucination -------------------------------------------------------------------------------------


async def hallucination_suite(sup: Supervisor, model: str, quick: bool, progress: Progress) -> SuiteResult:
    cases = hallucination_cases(quick)
    verdicts = []
    rows = []
    for i, case in enumerate(cases):
        question = MEMORY_TEMPLATE.format(notes=case.notes, question=case.question) if case.notes else case.question
        messages = [Message(role="system", content=HALLUCINATION_SYSTEM), Message(role="user", content=question)]
        ans = await ask(sup, model, _request(model, messages, 32))
        if ans.error:
            raise RuntimeError(f"{model}: hallucination case {case.id} failed: {ans.error}")
        verdict = grade_answer(ans.text, case.answers)
        verdicts.append(verdict)
        rows.append({"id": case.id, "kind": case.kind, "answer": ans.text.strip()[:200], "verdict": verdict})
        progress(model, "hallucination", i + 1, len(cases))
    settings = run_settings(sup, model, quick) | {"cases": len(cases)}
    return SuiteResult(model, "hallucination", hallucination_summary(verdicts), settings, _now(), rows)


# --- tools ---------------------------------------------------------------------------------------------


# a call object as the prompt's syntax line shows it, with a real name in place of the placeholder;
# an offered schema echoed back has "description" after the name, so it does not match
_CALL_OBJECT = re.compile(r'\{\s*"name"\s*:\s*"(?!<)[^"]*"\s*,\s*"(?:arguments|parameters)"\s*:')
# a fenced block is a call attempt only when it holds JSON or a tool-call language, not a Python snippet
_CALL_FENCE = re.compile(r"```(?:json|tool_code|tool_call)?\s*[\[{]|```(?:tool_code|tool_call)\b")


def attempted_call(text: str) -> bool:
    """Whether text that parsed into no call was nevertheless trying to be one.

    Counted as a parse failure rather than a decision not to call: JSON as the whole answer, a
    call marker, a fenced JSON or tool-code block, or a call object inside prose. An answer that
    echoes the tool instructions back is not an attempt, nor is a Python snippet.
    """
    body = text.strip()
    return (
        body.startswith(("{", "["))
        or any(m in body for m in tools.MARKERS)
        or _CALL_FENCE.search(body) is not None
        or _CALL_OBJECT.search(body) is not None
    )


async def tools_suite(sup: Supervisor, model: str, quick: bool, progress: Progress) -> SuiteResult:
    cases = tool_cases(quick)
    system = ha.legacy_system_prompt()  # the layout its cases were written for
    scores: dict[str, Estimate] = {}
    rows = []
    total = 2 * len(cases)
    done = 0
    for grammar in (True, False):
        graded = []
        for case in cases:
            messages = [Message(role="system", content=system), Message(role="user", content=case.user)]
            req = _request(
                model,
                messages,
                64 if quick else 160,  # two calls take about 60 tokens; a rambling answer stops sooner in --quick
                tools=TOOLS,
                tool_choice=ToolChoice(mode="auto"),
                parallel_tool_calls=True,
                tool_grammar=grammar,
            )
            ans = await ask(sup, model, req)
            calls = [Call(c.name, c.arguments) for c in ans.calls]
            grade = grade_calls(calls, case.expected, SCHEMAS, parse_failed=not calls and attempted_call(ans.text))
            graded.append(GradedTool(case.category, grade))
            rows.append(
                {
                    "id": case.id,
                    "grammar": grammar,
                    "category": case.category,
                    "calls": [{"name": c.name, "arguments": c.arguments} for c in ans.calls],
                    "text": ans.text.strip()[:200],
                    "correct": grade.correct,
                    "error": grade.error,
                    "detail": grade.detail,
                }
            )
            done += 1
            progress(model, "tools", done, total)
        prefix = "" if grammar else "free_"
        for name, est in tool_summary(graded).items():
            scores[prefix + name] = est
    settings = run_settings(sup, model, quick) | {"cases": len(cases), "free_scores": "without the call grammar"}
    return SuiteResult(model, "tools", scores, settings, _now(), rows)


# --- assist ----------------------------------------------------------------------------------------


SUITE_FUNCS = {
    "latency": latency_suite,
    "hallucination": hallucination_suite,
    "tools": tools_suite,
    "assist": assist_suite,
}


async def run_bench(
    registry: Registry,
    registry_dir: Path,
    settings: Settings,
    models: Sequence[str],
    suites: Sequence[str],
    quick: bool,
    results: list[SuiteResult],
    progress: Progress,
) -> list[SuiteResult]:
    """Run each suite on each model, appending to ``results`` as each finishes (kept on Ctrl-C)."""
    sup = Supervisor(registry, registry_dir, settings)
    await sup.start()
    try:
        for model in models:
            await sup.unload()  # from nothing loaded, so this load is a sample of the load time
            started = time.perf_counter()
            await sup.load(model)
            first_load = (time.perf_counter() - started, sup.info.load_ms / 1000.0 if sup.info else 0.0)
            for suite in suites:
                if suite == "latency":
                    results.append(await latency_suite(sup, model, quick, progress, first_load))
                else:
                    results.append(await SUITE_FUNCS[suite](sup, model, quick, progress))
    finally:
        await sup.unload()  # the model's worker ends through the scheduler, as on an admin unload
        try:
            # seen on Python 3.11: close() can wait forever for the scheduler loop to take its cancel
            # (stuck in wait_for on the wake event); the workers die with this process regardless
            await asyncio.wait_for(sup.close(), 10)
        except TimeoutError:
            log.warning("the supervisor did not close within 10 s; its workers end with this process")
    return results


def bench_settings(base: Settings) -> Settings:
    """The daemon's settings with the slot kept as the bench needs it: no preload, every token streamed."""
    return base.model_copy(update={"preload": False, "stream_interval_ms": 0.0})
