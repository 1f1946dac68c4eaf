"""Property tests of the schema -> grammar compiler over generated JSON Schemas.

(a) every valid schema compiles (exactly or degraded), never raises; (b) llama.cpp accepts every
grammar; (c) what the grammar produces (sampled without a model, see gbnf_sampler) validates
against the original schema when the compile is exact, and against the schema it enforces
otherwise. Plus the Home Assistant tools that used to be a 400.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.gbnf_sampler import GrammarError, samples
from zoe_edge.canonical import Tool
from zoe_edge.worker import tools as T
from zoe_edge.worker.grammar import InvalidSchema, compile_schema, lower_schema, validate

FIXTURE = Path("/work/shared/fixtures/home-assistant/assist-first-turn.request.json")
if not FIXTURE.is_file():
    FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "home-assistant" / "assist-first-turn.request.json"

# --- a strategy for JSON Schemas --------------------------------------------------------------------

NAMES = ["a", "b", "name", "x y", 'q"uote', "back\\slash", "é", "", "root", "space", "string", "char", "kind"]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-50, 50),
    st.floats(-50, 50, allow_nan=False).map(lambda f: round(f, 2)),
    st.sampled_from(["", "a", "light", 'q"', "b\\s", "é", "two words", "\n"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=3),
    max_leaves=5,
)
PATTERNS = [
    "^[a-z]+$",
    "^[a-z]{2,4}$",
    "abc",
    "^light\\.",
    "_on$",
    '^"quoted"$',
    "^a\\\\b$",
    "^\\d{3}-\\d{2}$",
    "^\\w+( \\w+)*$",
    "^(on|off|toggle)$",
    "^[^ ]*$",
    "^.{0,5}$",
    "^(?=a).*$",  # a lookahead: degrades
    "(a)\\1",  # a backreference: degrades
    "^[\\s\\S]?$",
    "^[A-Z][a-z]*?$",
    "\\p{L}",  # valid ECMA, not Python: degrades
]
FORMATS = ["date", "time", "date-time", "uuid", "email", "hostname", "uri"]
bound = st.one_of(st.integers(-20, 120), st.floats(-20, 120, allow_nan=False).map(lambda f: round(f, 1)))


def _with(base: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    return {**base, **{k: v for k, v in extras.items() if v is not None}}


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def numeric(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda lo, hi, xlo, xhi, step: _with(
            {"type": kind},
            {"minimum": lo, "maximum": hi, "exclusiveMinimum": xlo, "exclusiveMaximum": xhi, "multipleOf": step},
        ),
        _optional(bound),
        _optional(bound),
        st.one_of(st.none(), st.none(), bound),
        st.one_of(st.none(), st.none(), bound),
        st.one_of(st.none(), st.none(), st.none(), st.sampled_from([1, 2, 0.5, 0.25, 3])),
    )


strings = st.builds(
    lambda lo, hi, pattern, fmt: _with(
        {"type": "string"}, {"minLength": lo, "maxLength": hi, "pattern": pattern, "format": fmt}
    ),
    _optional(st.integers(0, 4)),
    _optional(st.integers(0, 12)),
    st.one_of(st.none(), st.none(), st.sampled_from(PATTERNS)),
    st.one_of(st.none(), st.none(), st.none(), st.sampled_from(FORMATS)),
)

leaves = st.one_of(
    st.just({}),
    st.just(True),
    st.just({"description": "any JSON value, like Home Assistant's domain"}),
    st.sampled_from(
        [{"type": "null"}, {"type": "boolean"}, {"type": "integer"}, {"type": "number"}, {"type": "string"}]
    ),
    numeric("integer"),
    numeric("number"),
    strings,
    st.builds(lambda vs: {"enum": vs}, st.lists(json_values, min_size=1, max_size=4)),
    st.builds(lambda v: {"const": v}, json_values),
    st.builds(
        lambda t, vs: {"type": t, "enum": vs},
        st.sampled_from(["string", "integer"]),
        st.lists(json_scalars, min_size=1, max_size=4),
    ),
    st.sampled_from(
        [
            {"type": ["string", "null"]},
            {"type": ["integer", "string"], "minimum": 0, "maximum": 9, "maxLength": 3},
            {"minLength": 2},  # no type: a string constraint, every other type is fine
            {"minimum": 3},
            {"type": "integer", "multipleOf": 3},
            {"not": {"type": "string"}},
            {"type": "string", "format": "email"},
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "number", "minimum": 0.2, "maximum": 0.8},
            {"type": "number", "maximum": 2.5},
            {"$ref": "https://example.com/schema.json"},
            {"$ref": "#/$defs/missing"},
            False,
        ]
    ),
)


def composites(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    arrays = st.builds(
        lambda items, prefix, lo, hi, unique, closed: _with(
            {"type": "array"},
            {
                "items": False if closed and prefix else items,
                "prefixItems": prefix or None,
                "minItems": lo,
                "maxItems": hi,
                "uniqueItems": unique,
            },
        ),
        _optional(inner),
        st.one_of(st.none(), st.lists(inner, min_size=1, max_size=3)),
        _optional(st.integers(0, 3)),
        _optional(st.integers(0, 4)),
        st.one_of(st.none(), st.none(), st.just(True)),
        st.booleans(),
    )
    objects = st.builds(
        lambda props, required, extra, typed, odd: _with(
            {"type": "object"} if typed else {},
            {
                "properties": props,
                "required": sorted(set(required)) or None,
                "additionalProperties": extra,
                **odd,
            },
        ),
        st.dictionaries(st.sampled_from(NAMES), inner, max_size=4),
        st.lists(st.sampled_from(NAMES), max_size=3),
        st.one_of(st.none(), st.none(), st.booleans(), inner),
        st.booleans(),
        st.sampled_from(
            [
                {},
                {},
                {},
                {"minProperties": 1},
                {"maxProperties": 1},
                {"patternProperties": {"^x": {"type": "integer"}, "a": {"type": "string"}}},
                {"dependentRequired": {"a": ["b"]}},
                {"propertyNames": {"maxLength": 3}},
                {"propertyNames": {"pattern": "^[a-k]+$"}},
                {"propertyNames": {"enum": ["a", "b", "kind"]}},
            ]
        ),
    )
    combos = st.one_of(
        st.builds(lambda xs: {"anyOf": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"oneOf": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"allOf": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x, y: {"if": x, "then": y}, inner, inner),
        st.builds(lambda x: {"not": x}, inner),
        st.builds(lambda x, y: {**x, "anyOf": [y]} if isinstance(x, dict) else x, inner, inner),
        # discriminated union: disjoint, so oneOf is exact
        st.just(
            {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "a"}, "n": {"type": "integer"}},
                        "required": ["kind"],
                    },
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "b"}, "s": {"type": "string"}},
                        "required": ["kind"],
                    },
                ]
            }
        ),
    )
    return st.one_of(arrays, objects, combos)


_TREES: dict[tuple[str, ...], st.SearchStrategy[Any]] = {}


def _schema_tree(refs: list[str]) -> st.SearchStrategy[Any]:
    """Nested schemas whose leaves may refer to ``refs`` (built once per set: building is slow)."""
    key = tuple(sorted(refs))
    if key not in _TREES:
        base = leaves if not key else st.one_of(leaves, st.sampled_from([{"$ref": f"#/$defs/{r}"} for r in key]))
        _TREES[key] = st.recursive(base, composites, max_leaves=6)
    return _TREES[key]


@st.composite
def schemas(draw: st.DrawFn) -> Any:
    names = draw(st.lists(st.sampled_from(["ident", "item", "node"]), max_size=2, unique=True))
    defs = {n: draw(_schema_tree([])) for n in names}
    if "node" in defs and draw(st.booleans()):
        # recursion through an optional property: a tree
        defs["node"] = {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}}}
    root = draw(_schema_tree(names))
    if not defs:
        return root
    return {**root, "$defs": defs} if isinstance(root, dict) else {"allOf": [root], "$defs": defs}


# --- the properties ------------------------------------------------------------------------------------


def _values(gbnf: str, seed: int, n: int) -> list[Any]:
    try:
        texts = samples(gbnf, random.Random(seed), n, budget=300)
    except GrammarError as exc:
        assert "no finite output" in str(exc), exc  # a schema with no finite instance (required recursion)
        return []
    out = []
    for text in texts:
        try:
            out.append(json.loads(text))
        except ValueError as exc:
            raise AssertionError(f"the grammar produced invalid JSON {text!r}:\n{gbnf}") from exc
    return out


FAST = settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(schemas(), st.integers(0, 2**32))
def test_every_schema_compiles_and_its_output_validates(schema: Any, seed: int) -> None:
    caps = seed % 2 == 0  # tool arguments are capped, response_format is not
    compiled = compile_schema(schema, max_string=12 if caps else None, max_items=3 if caps else None)
    assert compiled.exact == (not [d for d in compiled.degraded if not d.endswith("(narrowed)")])
    for value in _values(compiled.grammar, seed, 3):
        assert validate(value, compiled.effective) == [], (value, compiled.effective, compiled.grammar)
        if compiled.exact:
            assert validate(value, schema) == [], (value, schema, compiled.grammar)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(schemas(), min_size=1, max_size=3), st.sampled_from(T.TOOL_FORMATS), st.integers(0, 2**32))
def test_call_grammars_for_generated_tools(params: list[Any], fmt: T.ToolFormat, seed: int) -> None:
    objects = [p if isinstance(p, dict) else {} for p in params]
    tools = [Tool(name=f"Tool{i}", parameters=p) for i, p in enumerate(objects)]
    gbnf = T.call_grammar(tools, fmt, parallel=seed % 2 == 0)
    exact = [lower_schema(p, require_object=True).exact for p in objects]
    try:
        texts = samples(gbnf, random.Random(seed), 2, budget=300)
    except GrammarError as exc:
        assert "no finite output" in str(exc), exc
        return
    for text in texts:
        parsed = T.parse(text, fmt)
        assert parsed is not None and parsed.calls, (text, gbnf)
        for call in parsed.calls:
            i = int(call.name.removeprefix("Tool"))
            assert isinstance(call.arguments, dict)
            if exact[i]:
                assert T.call_problems([call], tools) == [], (text, objects[i])


@pytest.mark.parametrize("root", ["a string", 3, [{"type": "string"}], None])
def test_what_is_not_a_schema_is_invalid(root: Any) -> None:
    with pytest.raises(InvalidSchema, match="must be an object or a boolean"):
        compile_schema(root)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "strnig"}, "type"),
        ({"properties": {"a": 5}}, r"\$\.x\.a: a schema must be"),
        ({"type": "string", "minLength": "x"}, "minLength"),
        ({"anyOf": []}, "anyOf"),
        ({"required": "a"}, "required"),
    ],
)
def test_malformed_keywords_are_invalid_with_their_path(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidSchema, match=named):
        compile_schema({"type": "object", "properties": {"x": schema}})


# --- llama.cpp accepts the grammars ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(smollm_gguf: Path) -> Any:
    from llama_cpp import Llama

    return Llama(str(smollm_gguf), vocab_only=True, verbose=False)._model.vocab


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(schemas())
def test_llama_cpp_accepts_every_grammar(vocab: Any, schema: Any) -> None:
    import llama_cpp

    # llama-cpp-python's LlamaGrammar.from_string only stores the text; the sampler really parses it
    for caps in (None, 12):
        gbnf = compile_schema(schema, max_string=caps, max_items=caps).grammar
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        assert sampler, gbnf
        llama_cpp.llama_sampler_free(sampler)


# --- Home Assistant ------------------------------------------------------------------------------------------


def ha_tools() -> list[Tool]:
    body = json.loads(FIXTURE.read_text(encoding="utf-8"))["body"]
    return [Tool.model_validate(t["function"]) for t in body["tools"]]


def test_home_assistant_tools_all_compile_exactly() -> None:
    tools = ha_tools()
    assert len(tools) == 6
    for tool in tools:
        compiled = compile_schema(tool.parameters, max_string=T.MAX_ARGUMENT_STRING, max_items=T.MAX_ARGUMENT_ITEMS)
        assert compiled.exact and compiled.degraded == [], (tool.name, compiled.degraded)
    for fmt in T.TOOL_FORMATS:
        assert "root ::=" in T.call_grammar(tools, fmt, parallel=True)


def test_home_assistant_typeless_domain_is_any_value() -> None:
    live = next(t for t in ha_tools() if t.name.endswith("GetLiveContext"))
    assert "type" not in live.parameters["properties"]["domain"]
    for value in ("light", ["light", "switch"]):
        assert validate({"domain": value}, live.parameters) == []
    gbnf = T.call_grammar([live], "generic", parallel=False)
    kinds: set[type] = set()
    for text in samples(gbnf, random.Random(7), 300, budget=200):
        parsed = T.parse(text, "generic")
        assert parsed is not None, text
        assert T.call_problems(parsed.calls, [live]) == [], text
        if "domain" in parsed.calls[0].arguments:
            kinds.add(type(parsed.calls[0].arguments["domain"]))
    assert {str, list} <= kinds, kinds  # a single domain and a list both come out of the grammar


# --- degradation, by example ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "multipleOf": 5}, "multipleOf"),
        ({"not": {"type": "string"}}, "'not'"),
        ({"type": "string", "format": "email"}, "email"),
        ({"oneOf": [{"type": "string"}, {"maxLength": 3}]}, "oneOf"),
        ({"type": "string", "pattern": "(?=x)"}, "pattern"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        (
            {"type": "object", "properties": {"x": {"type": "object", "minProperties": 1}}},
            "$.x: keyword 'minProperties'",
        ),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "'if'"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
    ],
)
def test_what_the_grammar_cannot_enforce_degrades_and_is_logged_once(
    schema: dict[str, Any], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="zoe_edge.worker.grammar"):
        first = compile_schema(schema, label="by example: ")
        again = compile_schema(schema, label="by example: ")
    assert not first.exact and any(named in d for d in first.degraded), first.degraded
    assert again.degraded == first.degraded
    warned = [r for r in caplog.records if named in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    "schema",
    [
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},  # disjoint: exactly anyOf
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]},  # b: any value
        {"type": "number", "exclusiveMinimum": 0},  # narrowed to >= 1, still valid
        {"type": "string", "pattern": "abc"},  # unanchored: anything around it
        {"type": "string", "pattern": '^"\\\\$'},  # a quote and a backslash, written as JSON escapes
        {"const": 'q"\\'},  # upstream wrote this literal unescaped
        {"type": "integer", "multipleOf": 0.5},  # every integer is one
        {"allOf": [{"type": "integer", "minimum": 0}, {"maximum": 10}]},
        {"type": ["integer", "null"], "minimum": 1},
        {"type": "array", "prefixItems": [{"type": "integer"}], "items": False, "maxItems": 0},
    ],
)
def test_exact_compiles(schema: dict[str, Any]) -> None:
    compiled = compile_schema(schema)
    assert compiled.exact, compiled.degraded
    for value in _values(compiled.grammar, 3, 30):
        assert validate(value, schema) == [], value


def test_additional_properties_never_repeat_a_declared_name() -> None:
    # upstream's extra members take any string as a name, so {"a": "text"} came out of this grammar
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "": {"type": "integer"}},
        "additionalProperties": {"type": "string"},
    }
    compiled = compile_schema(schema, max_string=3, max_items=3)
    assert compiled.exact
    values = _values(compiled.grammar, 11, 300)
    assert any(len(v) > 1 for v in values)
    for value in values:
        assert validate(value, schema) == [], value
