"""Schemas the property tests (test_grammar_property.py) once found a wrong ``exact`` for.

propertyNames was checked against an object's own properties and then left out of the core, so
an ``allOf`` sibling's properties (met with the first side's "any other name") came through
unchecked: the grammar was called exact and generated names that propertyNames forbids.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.unit.gbnf_sampler import samples
from zoe_edge.worker.grammar import compile_schema, lower_schema, validate

S = {"type": "string"}


def _objects(schema: Any, n: int = 60) -> list[Any]:
    compiled = compile_schema(schema, max_string=4, max_items=3)
    values = [json.loads(t) for t in samples(compiled.grammar, random.Random(7), n, budget=300)]
    for value in values:
        assert validate(value, compiled.effective) == [], (value, compiled.effective)
        if compiled.exact:
            assert validate(value, schema) == [], (value, compiled.grammar)
    return [v for v in values if isinstance(v, dict)]


def test_the_schema_hypothesis_found() -> None:
    kind = {"type": "object", "properties": {"kind": {"enum": ["a"]}, "s": S}, "required": ["kind"]}
    other = {"type": "object", "properties": {"kind": {"enum": ["b"]}, "s": S}, "required": ["kind"]}
    schema = {"allOf": [{"properties": {}, "propertyNames": {"maxLength": 3}}, {"oneOf": [kind, other]}]}
    compiled = compile_schema(schema)
    # every branch requires a name propertyNames forbids: no object, and nothing else either
    assert not compiled.exact
    assert any("no value satisfies" in d for d in compiled.degraded), compiled.degraded


@pytest.mark.parametrize(
    ("schema", "names"),
    [
        ({"allOf": [{"propertyNames": {"maxLength": 3}}, {"properties": {"kind": S, "s": S}}]}, {"s"}),
        ({"allOf": [{"properties": {"kind": S, "s": S}}, {"propertyNames": {"maxLength": 3}}]}, {"s"}),
        ({"allOf": [{"propertyNames": {"pattern": "^[a-c]$"}}, {"properties": {"a": S, "kind": S}}]}, {"a"}),
        ({"allOf": [{"propertyNames": {"enum": ["a", "b"]}}, {"properties": {"a": S, "kind": S}}]}, {"a"}),
        ({"allOf": [{"propertyNames": {"const": "a"}}, {"properties": {"a": S, "kind": S}}]}, {"a"}),
        ({"allOf": [{"propertyNames": False}, {"properties": {"a": S}}]}, set()),
        ({"allOf": [{"propertyNames": {"type": "integer"}}, {"properties": {"a": S}}]}, set()),
        (
            {
                "allOf": [
                    {"propertyNames": {"maxLength": 1}},
                    {"patternProperties": {"^k": S}, "properties": {"kind": S, "k": S}},
                ]
            },
            {"k"},
        ),
        (  # both sides name names: both apply
            {
                "allOf": [
                    {"propertyNames": {"maxLength": 3}},
                    {"propertyNames": {"minLength": 2}, "properties": {"a": S, "abc": S, "abcd": S}},
                ]
            },
            {"abc"},
        ),
        (  # the same object's anyOf
            {"propertyNames": {"maxLength": 3}, "anyOf": [{"properties": {"kind": S, "a": S}}, S]},
            {"a"},
        ),
        (  # through a $ref
            {
                "$defs": {"n": {"propertyNames": {"maxLength": 3}}},
                "allOf": [{"$ref": "#/$defs/n"}, {"properties": {"kind": S, "a": S}}],
            },
            {"a"},
        ),
        (  # an object enum
            {"allOf": [{"propertyNames": {"maxLength": 1}}, {"enum": [{"kind": 1}, {"a": 1}]}]},
            {"a"},
        ),
        (  # and an allOf after that: the merged object still checks names
            {
                "allOf": [
                    {"type": "object", "propertyNames": {"maxLength": 2}},
                    {"properties": {"a": S}},
                    {"properties": {"kind": S, "b": S}},
                ]
            },
            {"a", "b"},
        ),
    ],
)
def test_property_names_apply_to_the_properties_of_allof_siblings(schema: dict[str, Any], names: set[str]) -> None:
    compiled = compile_schema(schema)
    assert compiled.exact, compiled.degraded
    seen = {k for v in _objects(schema) for k in v}
    assert seen == names, seen


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "allOf": [{"propertyNames": {"maxLength": 3}}, {"required": ["kind"]}]},
        {
            "type": "object",
            "allOf": [{"propertyNames": {"enum": ["a"]}}, {"properties": {"kind": S}, "required": ["kind"]}],
        },
        {"type": "object", "propertyNames": {"maxLength": 1}, "const": {"kind": 1}},
    ],
)
def test_a_required_name_that_property_names_forbid_is_unsatisfiable(schema: dict[str, Any]) -> None:
    lowered = lower_schema(schema)
    assert not lowered.exact
    assert any("no value satisfies" in m for m, _ in lowered.notes), lowered.notes


def test_a_required_name_that_property_names_forbid_leaves_only_other_types() -> None:
    schema = {"allOf": [{"propertyNames": {"maxLength": 3}}, {"required": ["kind"]}]}
    compiled = compile_schema(schema)
    assert compiled.exact, compiled.degraded
    assert _objects(schema) == []  # only non-objects, which both sides allow


@pytest.mark.parametrize(
    "schema",
    [
        # the sibling's extra members take any name: the grammar cannot keep them short
        {"allOf": [{"propertyNames": {"maxLength": 1}}, {"additionalProperties": S}]},
        {"allOf": [{"additionalProperties": S}, {"propertyNames": {"maxLength": 1}, "properties": {"a": S}}]},
    ],
)
def test_property_names_against_a_siblings_additional_properties_degrade(schema: dict[str, Any]) -> None:
    compiled = compile_schema(schema)
    assert not compiled.exact
    assert any("propertyNames" in d for d in compiled.degraded), compiled.degraded
    _objects(schema)  # still valid under what it does enforce


# maxProperties was held by "only the declared names are generated" and then left out of the core,
# so an allOf sibling's properties came through uncounted (hypothesis, in a CI run of issue 18)


def test_max_properties_counts_the_properties_of_allof_siblings() -> None:
    kind = {"type": "object", "properties": {"kind": {"enum": ["a"]}, "n": {"type": "integer"}}, "required": ["kind"]}
    other = {"type": "object", "properties": {"kind": {"enum": ["b"]}, "s": S}, "required": ["kind"]}
    schema = {"allOf": [{"properties": {}, "maxProperties": 1}, {"oneOf": [kind, other]}]}
    compiled = compile_schema(schema)
    # two names may be generated under a limit of one: said, not claimed exact
    assert not compiled.exact
    assert any("maxProperties" in d for d in compiled.degraded), compiled.degraded
    _objects(schema)


def test_max_properties_still_holds_when_the_siblings_stay_under_it() -> None:
    schema = {"allOf": [{"properties": {}, "maxProperties": 2}, {"properties": {"a": S, "b": S}}]}
    compiled = compile_schema(schema)
    assert compiled.exact, compiled.degraded
    assert compiled.effective.get("maxProperties") == 2 or "maxProperties" in json.dumps(compiled.effective)
    assert all(len(v) <= 2 for v in _objects(schema))
