"""Selection by score (pure) and the registry write-back that keeps the owner's comments."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zoe_edge.bench.scoring import Estimate, proportion
from zoe_edge.bench.suite import SuiteResult
from zoe_edge.bench.writeback import render, write_scores
from zoe_edge.canonical import GenerationRequest, Message
from zoe_edge.errors import ModelNotFound
from zoe_edge.registry import load_registry, parse_registry
from zoe_edge.routing.routes import Target, plan_request
from zoe_edge.routing.select import lower_is_better

REGISTRY = """\
# the owner's header comment
default: small

models:
  # the tiny one
  small:
    file: /models/small.gguf   # trailing comment
    n_ctx: 2048
  big:
    file: /models/big.gguf
routes:
  action:
    targets:
      - select: {metric: tools.score, fits: true}
      - openai:gpt-4o-mini
providers:
  openai: {type: openai, base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY}
"""


def _tools(model: str, k: int, n: int) -> SuiteResult:
    return SuiteResult(model, "tools", {"score": proportion(k, n)}, {"threads": 2, "quick": False}, "2026-01-01T00:00")


def _latency(model: str, e2e: float) -> SuiteResult:
    return SuiteResult(model, "latency", {"e2e_ms": Estimate(e2e, None, None, 10)}, {"threads": 2}, "2026-01-01T00:00")


def _req() -> GenerationRequest:
    return GenerationRequest(model="action", messages=[Message(role="user", content="turn on the light")])


def _written(*results: SuiteResult) -> str:
    return render(REGISTRY, list(results))


def test_write_back_keeps_comments_order_and_loads() -> None:
    text = _written(_tools("small", 30, 100), _latency("small", 800.0))
    assert text.startswith("# the owner's header comment\ndefault: small")
    assert "# the tiny one" in text and "# trailing comment" in text
    assert text.index("small:") < text.index("big:") < text.index("routes:")
    registry = parse_registry(yaml.safe_load(text))
    score = registry.models["small"].score("tools.score")
    assert score is not None and score.value == pytest.approx(0.3) and score.n == 100
    assert score.low is not None and score.low < 0.3 < (score.high or 0)
    assert registry.models["small"].bench["tools"].settings["threads"] == 2
    assert registry.models["big"].score("tools.score") is None
    # writing again replaces the suite's record instead of adding a second one
    again = render(text, [_tools("small", 40, 100)])
    assert again.count("tools:") == 1 and parse_registry(yaml.safe_load(again)).models["small"].score("tools.score")


def test_write_scores_is_atomic_and_refuses_a_registry_that_would_not_load(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(REGISTRY)
    write_scores(path, [_tools("small", 5, 10)])
    assert "# trailing comment" in path.read_text()
    assert load_registry(path).models["small"].score("tools.score") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["models.yaml"]  # no temporary file left behind
    bad = SuiteResult("small", "tools", {"score": Estimate(0.5, None, None, -1)}, {}, "now")  # n < 0 is invalid
    before = path.read_text()
    with pytest.raises(Exception, match="n"):
        write_scores(path, [bad])
    assert path.read_text() == before


def test_select_picks_the_best_score_among_models_that_fit() -> None:
    registry = parse_registry(yaml.safe_load(_written(_tools("small", 20, 200), _tools("big", 120, 200))))
    plan = plan_request(registry, "action", _req(), fits={"small": True, "big": True})
    assert plan.targets[0] == Target("big") and plan.targets[1].provider == "openai"
    assert "select tools.score: big, best tools.score 0.6" in plan.reason
    # big does not fit the board: small is chosen, and the reason says why
    plan = plan_request(registry, "action", _req(), fits={"small": True, "big": False})
    assert plan.targets[0] == Target("small") and "big does not fit" in plan.reason


def test_overlapping_intervals_are_a_tie_broken_by_speed_then_size() -> None:
    text = _written(_tools("small", 50, 100), _tools("big", 55, 100), _latency("small", 900.0), _latency("big", 400.0))
    registry = parse_registry(yaml.safe_load(text))
    plan = plan_request(registry, "action", _req(), fits={"small": True, "big": True}, sizes={"small": 1, "big": 9})
    assert plan.targets[0] == Target("big")  # a tie on score, and big is faster
    assert "ties with small" in plan.reason and "faster" in plan.reason
    text = _written(_tools("small", 50, 100), _tools("big", 55, 100))
    registry = parse_registry(yaml.safe_load(text))
    plan = plan_request(registry, "action", _req(), fits={"small": True, "big": True}, sizes={"small": 1, "big": 9})
    assert plan.targets[0] == Target("small") and "smaller" in plan.reason


def test_no_scores_leaves_the_other_targets_and_a_reason() -> None:
    registry = parse_registry(yaml.safe_load(REGISTRY))
    plan = plan_request(registry, "action", _req())
    assert plan.targets == (Target("gpt-4o-mini", "openai"),)
    assert "no candidate" in plan.reason and "small has no tools.score" in plan.reason
    only_select = REGISTRY.replace("      - openai:gpt-4o-mini\n", "")
    with pytest.raises(ModelNotFound, match="no usable target"):
        plan_request(parse_registry(yaml.safe_load(only_select)), "action", _req())


def test_select_rule_validation() -> None:
    with pytest.raises(Exception, match="metric"):
        parse_registry(yaml.safe_load(REGISTRY.replace("metric: tools.score", "metric: tools")))
    with pytest.raises(Exception, match="unknown models"):
        parse_registry(yaml.safe_load(REGISTRY.replace("fits: true}", "among: [nope]}")))
    assert lower_is_better("latency.e2e_ms") and lower_is_better("hallucination.hallucination_rate")
    assert not lower_is_better("tools.score") and not lower_is_better("latency.gen_tps")
