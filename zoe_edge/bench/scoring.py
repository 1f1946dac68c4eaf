"""Graders for the bench suites: pure functions over a model's output and a case, plus Wilson intervals.

Nothing here runs a model. A hallucination answer is graded by rules (alias match, abstention
phrases); a tool-call answer BFCL-style (call count, function name, required arguments present,
types, allowed values with normalised strings, order-free matching for parallel calls).
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A proportion (or any figure) with its 95% interval and the number of cases behind it."""

    value: float
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": round(self.value, 4), "n": self.n}
        if self.low is not None and self.high is not None:
            out["low"] = round(self.low, 4)
            out["high"] = round(self.high, 4)
        return out


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials; (0, 1) when there are no trials."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(k: int, n: int) -> Estimate:
    low, high = wilson(k, n)
    return Estimate(k / n if n else 0.0, low, high, n)


def penalised(correct: int, incorrect: int, n: int) -> Estimate:
    """(correct - incorrect) / n, in [-1, 1], with a Wilson-based interval.

    The score is ``2q - 1 - a`` where ``q`` = correct/(correct+incorrect+abstained) is not a
    binomial alone; an exact interval needs a trinomial. We score each case +1/0/-1, map it to
    [0, 1] as (s + 1)/2, and take the Wilson interval of that mean as a proportion with n trials:
    the same width rule as the other figures, and honest at the ends (0 and n).
    """
    if n <= 0:
        return Estimate(0.0, -1.0, 1.0, 0)
    value = (correct - incorrect) / n
    half_points = correct + (n - correct - incorrect) * 0.5  # each case worth 1, 0.5 or 0
    low, high = wilson_fraction(half_points, n)
    return Estimate(value, 2 * low - 1, 2 * high - 1, n)


def wilson_fraction(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson interval for a fractional success count (half points for abstentions)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_of(estimates: Sequence[Estimate]) -> Estimate:
    """The unweighted mean of several proportions; its interval is the mean of their bounds.

    Averaging the bounds is wider than the exact interval of a mean of independent proportions
    (the sum of widths is at least the root of the sum of their squares): conservative, never
    overconfident.
    """
    if not estimates:
        return Estimate(0.0, 0.0, 1.0, 0)
    k = len(estimates)
    value = sum(e.value for e in estimates) / k
    low = sum(e.low if e.low is not None else e.value for e in estimates) / k
    high = sum(e.high if e.high is not None else e.value for e in estimates) / k
    return Estimate(value, low, high, sum(e.n for e in estimates))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --- strings ------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)")


def normalise(text: str) -> str:
    """Lower case, accents and punctuation gone (decimal points kept), articles dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("_", " ")
    text = _PUNCT.sub(" ", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def contains_phrase(haystack: str, needle: str) -> bool:
    """Whether normalised ``needle`` occurs in normalised ``haystack`` as whole words."""
    n = normalise(needle)
    if not n:
        return False
    return re.search(rf"(?<!\w){re.escape(n)}(?!\w)", normalise(haystack)) is not None


# --- hallucination --------------------------------------------------------------------------------

Verdict = Literal["correct", "incorrect", "abstained"]

ABSTAIN_PHRASES = (
    "i don't know",
    "i do not know",
    "i dont know",
    "don't know",
    "do not know",
    "not sure",
    "unknown",
    "cannot answer",
    "can't answer",
    "cannot be answered",
    "cannot know",
    "no way to know",
    "not mentioned",
    "not in the notes",
    "notes do not say",
    "notes don't say",
    "no information",
    "not enough information",
    "unanswerable",
    "i have no idea",
)


def first_answer(output: str) -> str:
    """The answer the protocol asks for: the first non-blank line, without a leading "Answer:"."""
    for line in output.strip().splitlines():
        line = line.strip()
        if line:
            return re.sub(r"^(final\s+)?answer\s*[:\-]\s*", "", line, flags=re.IGNORECASE)
    return ""


def is_abstention(answer: str) -> bool:
    a = normalise(answer)  # apostrophes of any kind become spaces
    return any(normalise(p) in a for p in ABSTAIN_PHRASES) if a else True


def grade_answer(output: str, answers: Sequence[str]) -> Verdict:
    """Grade one answer. ``answers`` are the accepted aliases; empty means the question has no answer.

    An answerable question: an alias in the first line is correct (even beside hedging), an
    abstention is abstained, anything else incorrect. An unanswerable or false-premise question:
    abstaining is the right answer (correct), any attempted answer is incorrect.
    """
    answer = first_answer(output)
    if not answers:
        return "correct" if is_abstention(answer) else "incorrect"
    if any(contains_phrase(answer, alias) for alias in answers):
        return "correct"
    return "abstained" if is_abstention(answer) else "incorrect"


def hallucination_summary(verdicts: Iterable[Verdict]) -> dict[str, Estimate]:
    vs = list(verdicts)
    n = len(vs)
    c, i, a = vs.count("correct"), vs.count("incorrect"), vs.count("abstained")
    return {
        "correct": proportion(c, n),
        "hallucination_rate": proportion(i, n),
        "abstention_rate": proportion(a, n),
        "correct_given_attempted": proportion(c, c + i),
        "score": penalised(c, i, n),
    }


# --- tool calls -----------------------------------------------------------------------------------

ToolError = Literal[
    "parse_failure",  # the answer tried to call (a call marker or JSON) but did not parse
    "missed_call",  # a call was expected, the model answered in text
    "false_call",  # a no-call case got a call
    "wrong_count",  # wrong number of calls
    "invented_function",  # a function name that was never offered
    "wrong_function",
    "missing_argument",
    "extra_argument",
    "wrong_type",
    "wrong_value",
]
# failures of the decision (call or not, which function) as opposed to of the call's content
DECISION_ERRORS = frozenset({"missed_call", "false_call", "wrong_count", "wrong_function", "invented_function"})


@dataclass(frozen=True)
class ExpectedCall:
    """One call a case expects. ``args``: argument -> accepted values; ``optional``: may be absent."""

    name: str
    args: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Call:
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class ToolGrade:
    correct: bool
    error: ToolError | None = None
    detail: str = ""


def _json_type_ok(value: Any, kind: str | None) -> bool:
    if kind is None:
        return True
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":  # an integer is a valid number, as in BFCL
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True


def _same_value(got: Any, want: Any) -> bool:
    if isinstance(want, str):
        return isinstance(got, str) and normalise(got) == normalise(want)
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, int | float):
        return isinstance(got, int | float) and math.isclose(float(got), float(want), abs_tol=1e-9)
    if isinstance(want, list):
        # lists are compared as sets of normalised values: ["light"] == ["Light"]
        if not isinstance(got, list) or len(got) != len(want):
            return False
        remaining = list(want)
        for item in got:
            match = next((j for j, w in enumerate(remaining) if _same_value(item, w)), None)
            if match is None:
                return False
            remaining.pop(match)
        return True
    return bool(got == want)


def _check_call(call: Call, want: ExpectedCall, schemas: Mapping[str, Mapping[str, Any]]) -> ToolGrade:
    if call.name not in schemas:
        return ToolGrade(False, "invented_function", call.name)
    if call.name != want.name:
        return ToolGrade(False, "wrong_function", f"{call.name} instead of {want.name}")
    props: Mapping[str, Any] = schemas[call.name].get("properties", {}) or {}
    for arg in want.args:
        if arg not in call.arguments and arg not in want.optional:
            return ToolGrade(False, "missing_argument", f"{call.name}: {arg}")
    for arg, value in call.arguments.items():
        if arg not in want.args:
            return ToolGrade(False, "extra_argument", f"{call.name}: {arg}={value!r}")
        kind = (props.get(arg) or {}).get("type")
        if not _json_type_ok(value, kind):
            return ToolGrade(False, "wrong_type", f"{call.name}: {arg}={value!r} is not {kind}")
        if not any(_same_value(value, ok) for ok in want.args[arg]):
            return ToolGrade(False, "wrong_value", f"{call.name}: {arg}={value!r} not in {list(want.args[arg])!r}")
    return ToolGrade(True)


# the order errors are reported in when no assignment of calls to expected calls works
_SEVERITY: tuple[ToolError, ...] = (
    "invented_function",
    "wrong_function",
    "missing_argument",
    "extra_argument",
    "wrong_type",
    "wrong_value",
)


def grade_calls(
    calls: Sequence[Call],
    expected: Sequence[ExpectedCall],
    schemas: Mapping[str, Mapping[str, Any]],
    *,
    parse_failed: bool = False,
) -> ToolGrade:
    """Grade one answer. ``expected`` empty: a no-call case, right only when no call was made.

    ``schemas``: offered function name -> its JSON schema of arguments. ``parse_failed``: the
    answer held no parsed call but tried to make one (reported apart from a decision not to call).
    """
    if not expected:
        if calls:
            invented = [c.name for c in calls if c.name not in schemas]
            detail = ", ".join(c.name for c in calls)
            return ToolGrade(False, "false_call", detail + (" (invented)" if invented else ""))
        return ToolGrade(True)
    if not calls:
        return ToolGrade(False, "parse_failure" if parse_failed else "missed_call")
    for call in calls:
        if call.name not in schemas:
            return ToolGrade(False, "invented_function", call.name)
    if len(calls) != len(expected):
        return ToolGrade(False, "wrong_count", f"{len(calls)} calls, expected {len(expected)}")

    # order-free: the answer is right when some one-to-one assignment of calls to expected calls works;
    # otherwise report the closest miss (the assignment whose worst error is the mildest)
    def rank(g: ToolGrade) -> int:
        return _SEVERITY.index(g.error) if g.error in _SEVERITY else 0

    best: ToolGrade | None = None
    for order in itertools.permutations(range(len(calls))):
        grades = [_check_call(calls[j], want, schemas) for j, want in zip(order, expected, strict=True)]
        failed = [g for g in grades if not g.correct]
        if not failed:
            return ToolGrade(True)
        worst = min(failed, key=rank)
        if best is None or rank(worst) > rank(best):
            best = worst
    assert best is not None
    return best


TOOL_CATEGORIES = ("simple", "multiple", "parallel", "no_call")


@dataclass(frozen=True)
class GradedTool:
    category: str
    grade: ToolGrade


def tool_summary(graded: Sequence[GradedTool]) -> dict[str, Estimate]:
    """Accuracy per category, their unweighted mean (``score``), and the error rates over all cases."""
    out: dict[str, Estimate] = {}
    per_cat = []
    for cat in TOOL_CATEGORIES:
        rows = [g for g in graded if g.category == cat]
        if rows:
            est = proportion(sum(g.grade.correct for g in rows), len(rows))
            out[cat] = est
            per_cat.append(est)
    out["score"] = mean_of(per_cat)
    n = len(graded)
    errors = [g.grade.error for g in graded]
    out["parse_failures"] = proportion(errors.count("parse_failure"), n)
    out["wrong_decisions"] = proportion(sum(e in DECISION_ERRORS for e in errors), n)
    out["invented_functions"] = proportion(
        sum(e == "invented_function" or (e == "false_call" and "(invented)" in g.grade.detail) for g, e in
            zip(graded, errors, strict=True)),
        n,
    )  # fmt: skip
    no_call = [g for g in graded if g.category == "no_call"]
    out["false_calls"] = proportion(sum(g.grade.error == "false_call" for g in no_call), len(no_call))
    return out
