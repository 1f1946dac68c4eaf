"""Tool-call formats without a running daemon: parsers, schema checks, grammars, prompt rendering."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from zoe_edge.canonical import GenerationRequest, Message, Tool, ToolCallRef, ToolChoice
from zoe_edge.worker import tools as T
from zoe_edge.worker.grammar import (
    InvalidSchema,
    compile_schema,
    integer_range_rule,
    number_range_rule,
    schema_grammar,
    unsupported_features,
    validate,
)

LIGHT = Tool(
    name="HassLightSet",
    description="Sets the brightness of a light",
    parameters={
        "type": "object",
        "properties": {"name": {"type": "string"}, "brightness": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["name", "brightness"],
    },
)
WEATHER = Tool(
    name="GetWeather",
    parameters={"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
)
TOOLS = [LIGHT, WEATHER]

# --- parsers, on outputs as the model families write them ------------------------------------------


def calls(parsed: T.Parsed | None) -> list[tuple[str, dict[str, Any]]]:
    assert parsed is not None
    return [(c.name, c.arguments) for c in parsed.calls]


def test_hermes_single_and_parallel() -> None:
    qwen = '<tool_call>\n{"name": "HassLightSet", "arguments": {"name": "desk lamp", "brightness": 40}}\n</tool_call>'
    assert calls(T.parse_hermes(qwen)) == [("HassLightSet", {"name": "desk lamp", "brightness": 40})]
    two = qwen + '\n<tool_call>\n{"name": "GetWeather", "arguments": {"location": "Oslo"}}\n</tool_call>'
    assert [n for n, _ in calls(T.parse_hermes(two))] == ["HassLightSet", "GetWeather"]


def test_hermes_keeps_text_around_calls_and_tolerates_missing_close_tag() -> None:
    text = (
        'Sure, dimming it now.\n<tool_call>\n{"name": "HassLightSet", "arguments": {"name": "hall", "brightness": 5}}'
    )
    parsed = T.parse_hermes(text)
    assert parsed is not None and parsed.content == "Sure, dimming it now."
    assert calls(parsed) == [("HassLightSet", {"name": "hall", "brightness": 5})]


def test_hermes_arguments_as_json_string() -> None:
    text = '<tool_call>{"name": "GetWeather", "arguments": "{\\"location\\": \\"Rome\\"}"}</tool_call>'
    assert calls(T.parse_hermes(text)) == [("GetWeather", {"location": "Rome"})]


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "HassLightSet", "arguments": {"name": "desk lamp", "brightness": 4',  # cut off
        '<tool_call>\n{"name": "HassLightSet", "arguments": {name: "desk"}}\n</tool_call>',  # not JSON
        '<tool_call>\n{"arguments": {"name": "desk"}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "GetWeather", "arguments": "Oslo"}\n</tool_call>',  # arguments not an object
        '<tool_call>{"name": "GetWeather", "arguments": {}}</tool_call> <tool_call>oops</tool_call>',  # one bad
        "I cannot call tools right now.",
    ],
)
def test_hermes_malformed_is_text(text: str) -> None:
    assert T.parse_hermes(text) is None
    assert T.parse(text, "hermes") is None


def test_llama3_json_and_python_tag() -> None:
    plain = '{"name": "GetWeather", "parameters": {"location": "San Francisco, CA"}}'
    assert calls(T.parse_llama3(plain)) == [("GetWeather", {"location": "San Francisco, CA"})]
    tagged = '<|python_tag|>{"type": "function", "name": "GetWeather", "parameters": {"location": "Lima"}}'
    assert calls(T.parse_llama3(tagged)) == [("GetWeather", {"location": "Lima"})]


@pytest.mark.parametrize(
    "text",
    [
        'Here you go: {"name": "GetWeather", "parameters": {"location": "Lima"}}',  # prose first
        '{"name": "GetWeather", "parameters": {"location": "Lima"}',  # unbalanced
        '{"name": "GetWeather", "parameters": {"location": "Lima"}} and then I will',  # trailing prose
        '{"city": "Lima", "temperature": 21}',  # JSON, but not a call
        "",
    ],
)
def test_llama3_malformed_is_text(text: str) -> None:
    assert T.parse_llama3(text) is None
    assert T.parse(text, "llama3") is None


def test_mistral_list_and_v11_forms() -> None:
    v3 = '[TOOL_CALLS] [{"name": "GetWeather", "arguments": {"location": "Paris"}, "id": "abcDEF123"}]'
    assert calls(T.parse_mistral(v3)) == [("GetWeather", {"location": "Paris"})]
    v11 = (
        '[TOOL_CALLS]GetWeather[ARGS]{"location": "Paris"}[TOOL_CALLS]HassLightSet[ARGS]{"name": "a", "brightness": 1}'
    )
    assert calls(T.parse_mistral(v11)) == [
        ("GetWeather", {"location": "Paris"}),
        ("HassLightSet", {"name": "a", "brightness": 1}),
    ]


@pytest.mark.parametrize(
    "text",
    [
        '[TOOL_CALLS] [{"name": "GetWeather", "arguments": {"location": "Par',
        "[TOOL_CALLS] I would like to call a tool",
        '[TOOL_CALLS]GetWeather[ARGS]{"location": }',
        "[TOOL_CALLS]",
    ],
)
def test_mistral_malformed_is_text(text: str) -> None:
    assert T.parse_mistral(text) is None
    assert T.parse(text, "mistral") is None


def test_bare_json_shapes() -> None:
    one = '{"name": "GetWeather", "arguments": {"location": "Kyiv"}}'
    assert calls(T.parse_json(one)) == [("GetWeather", {"location": "Kyiv"})]
    fenced = "```json\n" + one + "\n```"
    assert calls(T.parse_json(fenced)) == [("GetWeather", {"location": "Kyiv"})]
    array = f"[{one}, {one}]"
    assert len(calls(T.parse_json(array))) == 2
    lines = one + "\n" + '{"name": "HassLightSet", "arguments": {"name": "x", "brightness": 3}}'
    assert [n for n, _ in calls(T.parse_json(lines))] == ["GetWeather", "HassLightSet"]
    wrapped = '{"tool_call": {"name": "GetWeather", "arguments": {"location": "Kyiv"}}}'
    assert calls(T.parse_json(wrapped)) == [("GetWeather", {"location": "Kyiv"})]
    openai_like = (
        '{"type": "function", "function": {"name": "GetWeather", "arguments": "{\\"location\\": \\"Kyiv\\"}"}}'
    )
    assert calls(T.parse_json(openai_like)) == [("GetWeather", {"location": "Kyiv"})]


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Kyiv is sunny.",
        '{"response": "It is sunny."}',
        '{"name": "GetWeather", "arguments": {"location": "Kyiv"}',
        '{"name": "GetWeather", "arguments": {"location": "Kyiv"}} {"broken',
        "[1, 2, 3]",
        "{}",
    ],
)
def test_bare_json_malformed_is_text(text: str) -> None:
    assert T.parse_json(text) is None
    assert T.parse(text, "generic") is None


def test_parse_falls_back_to_other_formats() -> None:
    hermes = '<tool_call>{"name": "GetWeather", "arguments": {"location": "Oslo"}}</tool_call>'
    assert calls(T.parse(hermes, "generic")) == [("GetWeather", {"location": "Oslo"})]


def test_call_problems_checks_name_and_schema() -> None:
    ok = [T.ParsedCall("HassLightSet", {"name": "lamp", "brightness": 100})]
    assert T.call_problems(ok, TOOLS) == []
    assert T.call_problems(ok, TOOLS, only="GetWeather") == ["HassLightSet: not an offered tool"]
    too_bright = [T.ParsedCall("HassLightSet", {"name": "lamp", "brightness": 101})]
    assert "maximum" in T.call_problems(too_bright, TOOLS)[0]
    missing = [T.ParsedCall("GetWeather", {})]
    assert "location" in T.call_problems(missing, TOOLS)[0]
    assert T.call_problems([T.ParsedCall("Nope", {})], TOOLS) == ["Nope: not an offered tool"]


# --- schemas: what the grammar cannot enforce degrades, is named, and is checked after ------------------


@pytest.mark.parametrize(
    ("schema", "named", "loose"),
    [
        ({"type": "integer", "multipleOf": 5}, "multipleOf", True),
        ({"not": {"type": "string"}}, "'not'", True),
        ({"type": "string", "format": "email"}, "email", True),
        ({"oneOf": [{"type": "string"}, {"maxLength": 3}]}, "oneOf", True),
        ({"type": "string", "pattern": "^(?=a)"}, "pattern", True),
        ({"type": "number", "exclusiveMinimum": 0}, "rounded inward", False),
        ({"type": "number", "maximum": 2.5}, "whole numbers", False),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems", True),
        (
            {"type": "object", "properties": {"x": {"type": "object", "minProperties": 1}}},
            "$.x: keyword 'minProperties'",
            True,
        ),
        ({"$ref": "https://example.com/schema.json"}, "$ref", True),
    ],
)
def test_unsupported_features_are_named(schema: dict[str, Any], named: str, loose: bool) -> None:
    problems = unsupported_features(schema)
    assert problems and any(named in p for p in problems), problems
    compiled = compile_schema(schema)  # a grammar all the same: never a 400
    assert "root ::=" in compiled.grammar
    assert compiled.exact is not loose


def test_what_the_grammar_now_says_exactly() -> None:
    # once refused: a disjoint oneOf is an anyOf, a required name without a schema is any value
    assert compile_schema({"oneOf": [{"type": "string"}, {"type": "integer"}]}).exact
    assert compile_schema({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}).exact
    assert compile_schema({"type": "string", "pattern": "abc"}).exact


def test_supported_schema_passes_and_annotations_are_fine() -> None:
    schema = {
        "type": "object",
        "title": "Args",
        "description": "anything descriptive is fine",
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "the device"},
            "level": {"type": ["integer", "null"], "minimum": 0, "maximum": 10, "default": 5},
            "when": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            "id": {"$ref": "#/$defs/ident"},
        },
        "required": ["name"],
        "$defs": {"ident": {"type": "string", "pattern": "^[a-z]+$"}},
    }
    assert unsupported_features(schema) == []
    assert "root ::=" in schema_grammar(schema)


def test_call_grammar_names_the_tool_with_the_problem(caplog: pytest.LogCaptureFixture) -> None:
    odd = Tool(name="Odd", parameters={"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}})
    with caplog.at_level("WARNING", logger="zoe_edge.worker.grammar"):
        assert "root ::=" in T.call_grammar([LIGHT, odd], "generic", parallel=False)
    assert any("tool Odd: $.n: keyword 'multipleOf'" in r.getMessage() for r in caplog.records)
    bad = Tool(name="Bad", parameters={"type": "object", "properties": {"n": 5}})
    with pytest.raises(InvalidSchema) as info:
        T.call_grammar([LIGHT, bad], "generic", parallel=False)
    assert info.value.features == ["tool Bad: $.n: a schema must be an object or a boolean, not 5"]


def _as_regex(gbnf_alternatives: str) -> re.Pattern[str]:
    """The range rules use only literals, classes, groups and repetitions: a direct regex translation."""
    body = re.sub(r'"((?:[^"\\]|\\.)*)"', lambda m: re.escape(m.group(1)), gbnf_alternatives)
    return re.compile(body.replace(" ", ""))


@pytest.mark.parametrize(
    ("lo", "hi"), [(0, 100), (1, 9), (5, 1234), (-5, -2), (-120, 37), (None, 5), (None, -3), (7, None), (0, 0)]
)
def test_integer_ranges_are_exact(lo: int | None, hi: int | None) -> None:
    rx = _as_regex(integer_range_rule(lo, hi))
    for x in range(-1500, 1500):
        inside = (lo is None or x >= lo) and (hi is None or x <= hi)
        assert bool(rx.fullmatch(str(x))) == inside, x
    assert not rx.fullmatch("007")


@pytest.mark.parametrize(("lo", "hi"), [(0, 100), (-10, 35), (5, 30), (-20, -5), (None, 10), (16, None)])
def test_number_ranges_are_exact(lo: int | None, hi: int | None) -> None:
    rx = _as_regex(number_range_rule(lo, hi))
    for x in range(-1500, 1500):
        value = x / 10
        for text in (f"{value:.1f}", f"{value:.2f}"):
            if float(text) == 0:
                continue  # "-0.0" is a fine zero; not worth a special case here
            inside = (lo is None or value >= lo) and (hi is None or value <= hi)
            assert bool(rx.fullmatch(text)) == inside, text


def test_validate_subset() -> None:
    schema = LIGHT.parameters
    assert validate({"name": "a", "brightness": 3}, schema) == []
    assert validate({"name": "a", "brightness": True}, schema)  # a bool is not an integer
    assert validate({"name": "a", "brightness": 3.5}, schema)
    assert validate({"name": 1, "brightness": 3}, schema)
    assert validate({"name": "a", "brightness": 3, "x": 1}, {**schema, "additionalProperties": False})
    assert validate("b", {"enum": ["a"]}) and validate(None, {"type": ["string", "null"]}) == []


@pytest.fixture(scope="module")
def vocab(smollm_path: Path) -> Llama:
    return Llama(str(smollm_path), vocab_only=True, verbose=False)


@pytest.mark.parametrize("fmt", T.TOOL_FORMATS)
@pytest.mark.parametrize("parallel", [False, True])
def test_call_grammars_are_accepted_by_llama_cpp(vocab: Llama, fmt: T.ToolFormat, parallel: bool) -> None:
    import llama_cpp

    climate = Tool(
        name="HassClimateSetTemperature",
        parameters={
            "type": "object",
            "properties": {"name": {"type": "string"}, "temperature": {"type": "number", "minimum": 5, "maximum": 35}},
            "required": ["temperature"],
        },
    )
    gbnf = T.call_grammar([*TOOLS, climate], fmt, parallel)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab._model.vocab, gbnf.encode(), b"root")
    assert sampler, gbnf
    llama_cpp.llama_sampler_free(sampler)


# --- choosing the format and rendering the prompt ------------------------------------------------------

SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# abridged from Qwen2.5-Instruct's tokenizer_config.json: the tool parts are verbatim in shape
QWEN_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\
\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""

MISTRAL_TEMPLATE = """{{- bos_token }}{%- for message in messages %}
{%- if message.role == 'user' %}
{%- if tools and loop.last %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}
[INST] {{ message.content }}[/INST]
{%- elif message.tool_calls %}[TOOL_CALLS] [
{%- for c in message.tool_calls %}{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
{%- endfor %}]{{ eos_token }}
{%- elif message.role == 'tool' %}[TOOL_RESULTS] {"content": {{ message.content | tojson }}}[/TOOL_RESULTS]
{%- else %}{{ message.content }}{{ eos_token }}{%- endif %}{%- endfor %}"""

LLAMA31_TEMPLATE = """{{- bos_token }}{%- if tools %}<|start_header_id|>system<|end_header_id|>

Environment: ipython
Use the function's "parameters". Functions: {% for t in tools %}{{ t | tojson }}{% endfor %}<|eot_id|>{%- endif %}
{%- for message in messages %}
{%- if message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>

{%- for c in message.tool_calls %}<|python_tag|>{"name": "{{ c.function.name }}", "parameters": \
{{ c.function.arguments | tojson }}}{%- endfor %}<|eom_id|>
{%- elif message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{{ message.content }}<|eot_id|>{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""


@pytest.mark.parametrize(
    ("template", "configured", "fmt", "native"),
    [
        (SMOLLM_TEMPLATE, "auto", "generic", False),
        (QWEN_TEMPLATE, "auto", "hermes", True),
        (MISTRAL_TEMPLATE, "auto", "mistral", True),
        (LLAMA31_TEMPLATE, "auto", "llama3", True),
        (QWEN_TEMPLATE, "generic", "generic", False),
        (SMOLLM_TEMPLATE, "hermes", "hermes", False),
        (QWEN_TEMPLATE, "hermes", "hermes", True),
        (QWEN_TEMPLATE, "mistral", "mistral", False),  # the template teaches another syntax
        ("{% if tools %}{{ tools }}{% endif %}{{ messages }}", "auto", "generic", False),  # unknown syntax
    ],
)
def test_resolve_setup(template: str, configured: str, fmt: str, native: bool) -> None:
    setup = T.resolve_setup(configured, template)
    assert (setup.format, setup.native) == (fmt, native), setup.reason


CONVERSATION = [
    Message(role="system", content="You control a home."),
    Message(role="user", content="Dim the desk lamp to 30."),
    Message(
        role="assistant",
        content="",
        tool_calls=[ToolCallRef(id="call_1", name="HassLightSet", arguments={"name": "desk lamp", "brightness": 30})],
    ),
    Message(role="tool", content='{"success": true}', tool_call_id="call_1"),
    Message(role="tool", content='{"temperature": 21}', tool_call_id="call_2", name="GetWeather"),
]


def render(template: str, configured: str, choice: ToolChoice | None = None) -> str:
    setup = T.resolve_setup(configured, template)
    choice = choice or ToolChoice()
    offered = TOOLS if choice.mode != "none" else []
    messages = T.chat_messages(CONVERSATION, offered, choice, setup)
    extra = {"tools": [T.openai_tool(t) for t in offered]} if offered and setup.native else {}
    fmt = Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>")
    return str(fmt(messages=messages, **extra).prompt)


def test_render_generic_system_block_through_smollm_template() -> None:
    prompt = render(SMOLLM_TEMPLATE, "auto")
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou control a home.\n\nYou can call the following functions")
    assert json.dumps(LIGHT.parameters) in system  # the schema itself, not a paraphrase
    assert '{"name": "<function name>", "arguments": {<arguments>}}' in system
    assert "SmolLM" not in prompt  # our system message replaces the template's default one
    call = '<|im_start|>assistant\n{"name": "HassLightSet", "arguments": {"name": "desk lamp", "brightness": 30}}'
    assert call in prompt
    # both results in one user turn, each named (the second by its own name, the first via its call id)
    assert (
        '<|im_start|>user\nResult of HassLightSet: {"success": true}\nResult of GetWeather: {"temperature": 21}'
        "<|im_end|>\n<|im_start|>assistant\n"
    ) in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_render_generic_required_and_named_instructions() -> None:
    assert "You must call one of the functions." in render(SMOLLM_TEMPLATE, "auto", ToolChoice(mode="required"))
    named = render(SMOLLM_TEMPLATE, "auto", ToolChoice(mode="function", name="GetWeather"))
    assert "You must call the function GetWeather." in named
    none = render(SMOLLM_TEMPLATE, "auto", ToolChoice(mode="none"))
    assert "You can call" not in none and '"name": "HassLightSet"' in none  # history still rendered


def test_render_hermes_native_through_qwen_template() -> None:
    prompt = render(QWEN_TEMPLATE, "auto")
    assert "<tools>\n" + json.dumps(T.openai_tool(LIGHT)) in prompt
    assert "You can call the following functions" not in prompt  # the template speaks for itself
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "HassLightSet", "arguments": '
        '{"name": "desk lamp", "brightness": 30}}\n</tool_call><|im_end|>'
    ) in prompt
    assert (
        '<|im_start|>user\n<tool_response>\n{"success": true}\n</tool_response>\n'
        '<tool_response>\n{"temperature": 21}\n</tool_response><|im_end|>'
    ) in prompt


def test_render_hermes_system_block_when_template_lacks_tools() -> None:
    prompt = render(SMOLLM_TEMPLATE, "hermes")
    assert '<tool_call>\n{"name": "<function name>"' in prompt
    assert (
        '<tool_call>\n{"name": "HassLightSet", "arguments": {"name": "desk lamp", "brightness": 30}}\n</tool_call>'
        in prompt
    )
    assert '<tool_response>\n{"success": true}\n</tool_response>' in prompt


def test_render_mistral_native() -> None:
    prompt = render(MISTRAL_TEMPLATE, "auto")
    assert '[TOOL_CALLS] [{"name": "HassLightSet", "arguments": {"name": "desk lamp", "brightness": 30}}]</s>' in prompt
    assert '[TOOL_RESULTS] {"content": "{\\"success\\": true}"}[/TOOL_RESULTS]' in prompt


def test_render_llama3_native() -> None:
    prompt = render(LLAMA31_TEMPLATE, "auto")
    assert "Environment: ipython" in prompt and '"name": "GetWeather"' in prompt
    assert '<|python_tag|>{"name": "HassLightSet", "parameters": {"name": "desk lamp", "brightness": 30}}' in prompt
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"success": true}<|eot_id|>' in prompt


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("generic", '{"name": "GetWeather", "arguments": {"location": "Oslo"}}'),
        ("llama3", '{"name": "GetWeather", "parameters": {"location": "Oslo"}}'),
        ("hermes", '<tool_call>\n{"name": "GetWeather", "arguments": {"location": "Oslo"}}\n</tool_call>'),
        ("mistral", '[TOOL_CALLS][{"name": "GetWeather", "arguments": {"location": "Oslo"}}]'),
    ],
)
def test_rendered_calls_round_trip_through_the_parser(fmt: T.ToolFormat, expected: str) -> None:
    text = T.render_calls([("GetWeather", {"location": "Oslo"})], fmt)
    assert text == expected
    assert calls(T.parse(text, fmt)) == [("GetWeather", {"location": "Oslo"})]


# --- triggers of the lazy grammar ---------------------------------------------------------------------


def test_triggers() -> None:
    hermes, json_start = T.triggers("hermes"), T.triggers("generic")
    assert T.find_trigger("Let me check. <tool_call>{", hermes) == 14
    assert T.find_trigger("  \n{", json_start) == 3
    assert T.find_trigger("The set {1, 2}", json_start) is None  # a brace in prose is prose
    assert T.trigger_holdback("Let me check. <tool_", hermes) == 6
    assert T.trigger_holdback("Let me check.", hermes) == 0
    assert T.trigger_holdback(" \n", json_start) == 2  # blank lines before a call are not content


def test_canonical_request_rejects_inconsistent_tools() -> None:
    from pydantic import ValidationError

    base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ValidationError, match="not among the tools"):
        GenerationRequest.model_validate(
            {**base, "tools": [WEATHER.model_dump()], "tool_choice": {"mode": "function", "name": "Nope"}}
        )
    with pytest.raises(ValidationError, match="needs at least one tool"):
        GenerationRequest.model_validate({**base, "tool_choice": {"mode": "required"}})
    with pytest.raises(ValidationError, match="response_format"):
        GenerationRequest.model_validate({**base, "tools": [WEATHER.model_dump()], "constraint": {"kind": "json"}})


def test_schema_grammar_is_accepted_by_llama_cpp(vocab: Llama) -> None:
    import llama_cpp

    schema = {
        "type": "object",
        "properties": {
            "level": {"type": ["integer", "null"], "minimum": -3, "maximum": 10},
            "when": {"type": "string", "format": "date"},
            "id": {"type": "string", "pattern": "^[a-z]{2,4}$"},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["level", "id"],
    }
    sampler = llama_cpp.llama_sampler_init_grammar(vocab._model.vocab, schema_grammar(schema).encode(), b"root")
    assert sampler
    llama_cpp.llama_sampler_free(sampler)


def test_call_grammar_caps_free_strings_but_keeps_schema_limits() -> None:
    capped = Tool(
        name="Say",
        parameters={
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "short": {"type": "string", "maxLength": 5},
                "long": {"type": "string", "minLength": 300},
                "kind": {"type": "string", "enum": ["a", "b"]},
            },
        },
    )
    gbnf = T.call_grammar([capped], "generic", parallel=False)
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    # upstream spells a bounded repetition out as nested optionals, one "char" per place
    assert rules["call0-arguments-text"].count("char") == T.MAX_ARGUMENT_STRING
    assert rules["call0-arguments-short"].count("char") == 5
    assert rules["call0-arguments-long"].count("char") == 300  # minLength wins over the cap
    assert rules["call0-arguments-kind"] == '"\\"a\\"" | "\\"b\\""'
    # response_format is not capped: a document may be long
    assert "char*" in schema_grammar({"type": "object", "properties": {"t": {"type": "string"}}})


def test_call_grammar_caps_free_arrays_but_keeps_schema_limits() -> None:
    lists = Tool(
        name="Turn",
        parameters={
            "type": "object",
            "properties": {
                "domain": {"type": "array", "items": {"type": "string"}},
                "pair": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "many": {"type": "array", "items": {"type": "integer"}, "minItems": 20},
            },
        },
    )
    gbnf = T.call_grammar([lists], "generic", parallel=False)
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    # a small model that keeps listing never closes the bracket: the cap makes it close
    assert rules["call0-arguments-domain"].count("call0-arguments-domain-item") == T.MAX_ARGUMENT_ITEMS
    assert rules["call0-arguments-pair"].count("call0-arguments-pair-item") == 2
    assert rules["call0-arguments-many"].count("integer") == 20  # minItems wins over the cap
    # response_format is not capped: a document may list anything
    free = schema_grammar({"type": "array", "items": {"type": "string"}})
    assert "*" in dict(line.split(" ::= ", 1) for line in free.splitlines())["root"]


def test_pathological_output_is_text_not_a_crash() -> None:
    deep = "[" * 100_000
    assert T.parse(deep, "generic") is None
    assert T.parse("<tool_call>" + deep, "hermes") is None
    assert T.parse('{"name": "x", "arguments": "' + deep + '"}', "generic") is None
    assert T.parse("[TOOL_CALLS]" + deep, "mistral") is None


def test_registry_tool_format_field() -> None:
    from zoe_edge.errors import RegistryError
    from zoe_edge.registry import parse_registry

    entry = {"file": "m.gguf", "tool_format": "mistral"}
    assert parse_registry({"default": "m", "models": {"m": entry}}).models["m"].tool_format == "mistral"
    assert parse_registry({"default": "m", "models": {"m": {"file": "m.gguf"}}}).models["m"].tool_format == "auto"
    with pytest.raises(RegistryError, match="tool_format"):
        parse_registry({"default": "m", "models": {"m": {**entry, "tool_format": "xml"}}})
