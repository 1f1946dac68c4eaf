"""The bench's unconstrained run: `tool_grammar: false` decodes freely and parses with the same parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoe_edge.bench import ha
from zoe_edge.bench.runner import SCHEMAS, attempted_call
from zoe_edge.bench.scoring import ExpectedCall, grade_calls
from zoe_edge.canonical import GenerationRequest, Message, Sampling, TextDelta, Tool, ToolCall
from zoe_edge.worker.engine import Engine
from zoe_edge.worker.protocol import LoadSpec

COPY = 'Copy this line exactly: {"name": "MakeCoffee", "arguments": {"size": "large"}}'


@pytest.mark.model
def test_grammar_switch_changes_what_the_same_prompt_can_produce(smollm_path: Path) -> None:
    engine = Engine(LoadSpec(name="s", path=str(smollm_path), n_ctx=1024, n_batch=256, n_threads=2, n_gpu_layers=0))
    try:
        tools = [Tool.model_validate(t["function"]) for t in ha.TOOLS[:2]]

        def run(grammar: bool) -> list[object]:
            req = GenerationRequest(
                model="s",
                messages=[Message(role="user", content=COPY)],
                tools=tools,
                max_tokens=30,
                sampling=Sampling(temperature=0.0, seed=1),
                tool_grammar=grammar,
            )
            return list(engine.generate(req, lambda: False))

        constrained = [e for e in run(True) if isinstance(e, ToolCall)]
        # the grammar only lets a call to an offered tool out, whatever the model wanted to write
        assert constrained and all(c.name in ("HassTurnOn", "HassTurnOff") for c in constrained)
        free = run(False)
        text = "".join(e.text for e in free if isinstance(e, TextDelta))
        # unconstrained, the model copies the invented call and keeps talking: the parser finds no
        # call in that, and the bench counts it as a parse failure, not as a decision not to call
        assert not any(isinstance(e, ToolCall) for e in free)
        assert text.startswith('{"name": "MakeCoffee"'), text
        assert attempted_call(text)
        expected = [ExpectedCall("HassTurnOn", {"name": ("Kitchen Ceiling Light",)})]
        assert grade_calls([], expected, SCHEMAS, parse_failed=attempted_call(text)).error == "parse_failure"
    finally:
        engine.close()
