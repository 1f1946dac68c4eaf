"""The bench graders on hand-written outputs: every verdict a real model's answer can get."""

from __future__ import annotations

import pytest

from zoe_edge.bench import ha
from zoe_edge.bench.cases import hallucination_cases, tool_cases
from zoe_edge.bench.runner import attempted_call
from zoe_edge.bench.scoring import (
    Call,
    ExpectedCall,
    GradedTool,
    ToolGrade,
    grade_answer,
    grade_calls,
    hallucination_summary,
    mean_of,
    normalise,
    percentile,
    proportion,
    tool_summary,
    wilson,
)

SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in ha.TOOLS}
LIGHT_ON = ExpectedCall(
    "HassTurnOn",
    {"name": ("Kitchen Ceiling Light",), "domain": (["light"],), "area": ("Kitchen",)},
    frozenset({"domain", "area"}),
)
DIM = ExpectedCall("HassLightSet", {"name": ("Office Ceiling Light",), "brightness": (30,)}, frozenset())
THERMO = ExpectedCall("HassClimateSetTemperature", {"name": ("Hall Thermostat",), "temperature": (21,)})


def test_wilson_matches_known_values() -> None:
    # reference values of the Wilson score interval at 95%
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)


def test_right_call() -> None:
    call = Call("HassTurnOn", {"name": "kitchen ceiling light", "domain": ["Light"]})
    assert grade_calls([call], [LIGHT_ON], SCHEMAS) == ToolGrade(True)


def test_wrong_function() -> None:
    grade = grade_calls([Call("HassTurnOff", {"name": "Kitchen Ceiling Light"})], [LIGHT_ON], SCHEMAS)
    assert not grade.correct and grade.error == "wrong_function"


def test_invented_function() -> None:
    grade = grade_calls([Call("TurnOnLight", {"name": "Kitchen Ceiling Light"})], [LIGHT_ON], SCHEMAS)
    assert grade.error == "invented_function"


def test_missing_argument() -> None:
    grade = grade_calls([Call("HassLightSet", {"name": "Office Ceiling Light"})], [DIM], SCHEMAS)
    assert grade.error == "missing_argument" and "brightness" in grade.detail


def test_optional_argument_may_be_left_out() -> None:
    assert grade_calls([Call("HassTurnOn", {"name": "Kitchen Ceiling Light"})], [LIGHT_ON], SCHEMAS).correct


def test_extra_argument() -> None:
    call = Call("HassLightSet", {"name": "Office Ceiling Light", "brightness": 30, "color": "red"})
    assert grade_calls([call], [DIM], SCHEMAS).error == "extra_argument"


def test_wrong_type() -> None:
    call = Call("HassLightSet", {"name": "Office Ceiling Light", "brightness": "30"})
    assert grade_calls([call], [DIM], SCHEMAS).error == "wrong_type"
    # an integer is a number (as in BFCL): 21 for a temperature is the right type and value
    assert grade_calls([Call(THERMO.name, {"name": "Hall Thermostat", "temperature": 21.0})], [THERMO], SCHEMAS).correct


def test_value_outside_the_allowed_set() -> None:
    call = Call("HassLightSet", {"name": "Office Ceiling Light", "brightness": 60})
    assert grade_calls([call], [DIM], SCHEMAS).error == "wrong_value"
    wrong_room = Call("HassTurnOn", {"name": "Kitchen Ceiling Light", "area": "Garage"})
    assert grade_calls([wrong_room], [LIGHT_ON], SCHEMAS).error == "wrong_value"


def test_extra_call() -> None:
    calls = [Call("HassTurnOn", {"name": "Kitchen Ceiling Light"}), Call("HassTurnOn", {"name": "Hall Ceiling Light"})]
    assert grade_calls(calls, [LIGHT_ON], SCHEMAS).error == "wrong_count"


def test_parallel_calls_match_in_any_order() -> None:
    hall = ExpectedCall("HassTurnOn", {"name": ("Hall Ceiling Light",)})
    calls = [Call("HassTurnOn", {"name": "Hall Ceiling Light"}), Call("HassTurnOn", {"name": "Kitchen Ceiling Light"})]
    assert grade_calls(calls, [LIGHT_ON, hall], SCHEMAS).correct
    calls[0] = Call("HassTurnOn", {"name": "Porch Ceiling Light"})
    assert grade_calls(calls, [LIGHT_ON, hall], SCHEMAS).error == "wrong_value"


def test_no_call_case() -> None:
    assert grade_calls([], [], SCHEMAS).correct
    grade = grade_calls([Call("HassTurnOn", {"name": "TV"})], [], SCHEMAS)
    assert grade.error == "false_call"
    assert "(invented)" in grade_calls([Call("TurnOnTV", {})], [], SCHEMAS).detail


def test_missed_call_and_parse_failure_are_told_apart() -> None:
    assert grade_calls([], [LIGHT_ON], SCHEMAS).error == "missed_call"
    assert grade_calls([], [LIGHT_ON], SCHEMAS, parse_failed=True).error == "parse_failure"


def test_alias_match_and_normalisation() -> None:
    assert grade_answer("Roma.", ["Rome", "Roma"]) == "correct"
    assert grade_answer("The answer is William Shakespeare", ["Shakespeare"]) == "correct"
    assert grade_answer("Answer: 366\nbecause of February", ["366"]) == "correct"
    assert grade_answer("3660", ["366"]) == "incorrect"  # whole words, not substrings
    assert normalise("Ça  va, l'Été!") == "ca va l ete"
    assert normalise("21.5 degrees.") == "21.5 degrees"


def test_abstention() -> None:
    assert grade_answer("I don't know.", ["Paris"]) == "abstained"
    assert grade_answer("I don\u2019t know", ["Paris"]) == "abstained"
    assert grade_answer("", ["Paris"]) == "abstained"
    assert grade_answer("Lyon", ["Paris"]) == "incorrect"
    # no answer exists: abstaining is right, any answer is a hallucination
    assert grade_answer("I do not know.", []) == "correct"
    assert grade_answer("It was 1921.", []) == "incorrect"


def test_hallucination_summary() -> None:
    s = hallucination_summary(["correct"] * 6 + ["incorrect"] * 2 + ["abstained"] * 2)
    assert s["correct"].value == pytest.approx(0.6)
    assert s["hallucination_rate"].value == pytest.approx(0.2)
    assert s["abstention_rate"].value == pytest.approx(0.2)
    assert s["correct_given_attempted"].value == pytest.approx(0.75) and s["correct_given_attempted"].n == 8
    assert s["score"].value == pytest.approx(0.4)
    for est in s.values():
        assert est.low is not None and est.high is not None and est.low <= est.value <= est.high


def test_tool_summary_is_the_unweighted_mean_of_categories() -> None:
    graded = [GradedTool("simple", ToolGrade(True))] * 3 + [GradedTool("simple", ToolGrade(False, "missed_call"))]
    graded += [GradedTool("no_call", ToolGrade(False, "false_call", "TurnOnTV (invented)"))]
    graded += [GradedTool("parallel", ToolGrade(False, "parse_failure"))]
    s = tool_summary(graded)
    assert s["simple"].value == 0.75 and s["no_call"].value == 0.0 and s["parallel"].value == 0.0
    assert s["score"].value == pytest.approx(0.25)
    assert s["parse_failures"].value == pytest.approx(1 / 6)
    assert s["wrong_decisions"].value == pytest.approx(2 / 6)
    assert s["false_calls"].value == 1.0 and s["invented_functions"].value == pytest.approx(1 / 6)
    assert mean_of([proportion(1, 2), proportion(0, 2)]).value == 0.25


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)


def test_case_sets_are_large_enough_and_consistent() -> None:
    hal = hallucination_cases()
    tools = tool_cases()
    assert len(hal) >= 150 and len(tools) >= 150
    assert len({c.id for c in hal}) == len(hal) and len({c.id for c in tools}) == len(tools)
    assert {c.kind for c in hal} == {"fact", "unanswerable", "false_premise", "memory_present", "memory_absent"}
    assert {c.category for c in tools} == {"simple", "multiple", "parallel", "no_call"}
    assert 5 <= len(hallucination_cases(quick=True)) <= 15 and 5 <= len(tool_cases(quick=True)) <= 15
    # every expected call names an offered tool and only its arguments, and the named devices exist
    names = {e.name for e in ha.entities(70)}
    for case in tools:
        for call in case.expected:
            assert call.name in SCHEMAS, case.id
            props = SCHEMAS[call.name].get("properties", {})
            assert set(call.args) <= set(props), case.id
            for name in call.args.get("name", ()) if call.name != "HassListAddItem" else ():
                assert str(name) in names or "." in str(name), (case.id, name)
    # a perfect answer to every case grades correct: the expectations are satisfiable
    for case in tools:
        perfect = [Call(e.name, {k: v[0] for k, v in e.args.items()}) for e in case.expected]
        assert grade_calls(perfect, list(case.expected), SCHEMAS).correct, case.id
    for hc in hal:
        assert grade_answer(hc.answers[0] if hc.answers else "I don't know", list(hc.answers)) == "correct", hc.id


@pytest.mark.parametrize(
    ("text", "attempted"),
    [
        ('{"name": "MakeCoffee", "arguments": {}} and more', True),
        ("<tool_call>\n{'name': HassTurnOn}", True),
        ('Sure, I will do that: {"name": "HassTurnOn", "arguments": {"name": "Kitchen"', True),
        ('```json\n{"name": "HassTurnOn"}\n```', True),
        ("```tool_code\nHassTurnOn(name='Kitchen')\n```", True),
        ("HassTurnOn", False),
        ("You can use the following code:\n\n```python\ndef lock():\n    pass\n```", False),
        # a model parroting its instructions quotes the offered schemas and the syntax placeholder
        (
            "You can call the following functions.\n"
            + '{"name": "HassTurnOn", "description": "Turns on a device", "parameters": {}}\n'
            + 'reply with only this:\n{"name": "<function name>", "arguments": {<arguments>}}',
            False,
        ),
    ],
)
def test_attempted_call_tells_a_broken_call_from_prose(text: str, attempted: bool) -> None:
    assert attempted_call(text) is attempted
