"""The one name resolver (``zoe_edge.routing.names``): what every front, listing and lifecycle call resolves with."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from zoe_edge.canonical import GenerationRequest, Message, Tool
from zoe_edge.errors import ModelNotFound
from zoe_edge.registry import Registry, parse_registry
from zoe_edge.routing.names import registry_name, resolve_name
from zoe_edge.routing.routes import Target, plan_request

API = Path(__file__).resolve().parents[2] / "zoe_edge" / "api"


@pytest.fixture
def registry() -> Registry:
    return parse_registry(
        {
            "default": "small",
            "models": {
                "small": {"file": "s.gguf", "bench": {"tools": {"scores": {"score": {"value": 0.5}}}}},
                "big": {"file": "b.gguf", "bench": {"tools": {"scores": {"score": {"value": 0.9}}}}},
            },
            "aliases": {"chat": "small"},
            "providers": {"cloud": {"type": "openai", "base_url": "http://127.0.0.1:9", "api_key_env": "NOPE"}},
            "routes": {
                "hybrid": {"targets": ["cloud:gpt-x", "big"]},
                "cloud-only": {"targets": ["cloud:gpt-x"]},
                "best": {"targets": [{"select": {"metric": "tools.score"}}]},
                "actions": {"targets": ["big"]},
            },
            "auto": {
                "default": "chat",
                "rules": [
                    {"route": "actions", "reason": "tools offered", "tools": True},
                    {"route": "hybrid", "reason": "asks for the cloud", "pattern": "cloud"},
                ],
            },
        }
    )


@pytest.mark.parametrize(
    ("name", "canonical", "model"),
    [
        ("small", "small", "small"),
        ("small:latest", "small", "small"),
        ("chat", "chat", "small"),
        ("chat:latest", "chat", "small"),
        ("hybrid:latest", "hybrid", "big"),  # a route's first local target, past the cloud one
        ("best", "best", "big"),  # a select target chooses by score, as for a generation
        ("cloud-only:latest", "cloud-only", None),  # nothing local to load
        ("auto:latest", "auto", "small"),  # no rule matches an empty request: the default route
    ],
)
def test_every_name_and_its_latest_tag_resolve_alike(registry: Registry, name: str, canonical: str, model: str) -> None:
    resolved = resolve_name(registry, name)
    assert (resolved.requested, resolved.name, resolved.model) == (name, canonical, model)
    assert resolved.plan.requested == canonical  # what the cache, the ledger and x-zoe-route see


@pytest.mark.parametrize("name", ["nope", "nope:latest", "small:v2", "small:latest:latest", "Small", "", ":latest"])
def test_unknown_names_are_404s_naming_what_was_sent(registry: Registry, name: str) -> None:
    assert registry_name(registry, name) == name  # unchanged: the caller's checks and the 404 see it as sent
    with pytest.raises(ModelNotFound) as caught:
        resolve_name(registry, name)
    assert caught.value.status == 404 and repr(name) in caught.value.message


def test_a_registry_name_with_the_tag_itself_is_kept() -> None:
    registry = parse_registry({"default": "m", "models": {"m": {"file": "m.gguf"}}, "aliases": {"m:latest": "m"}})
    assert registry_name(registry, "m:latest") == "m:latest"


def test_auto_applies_its_rules_to_the_request_it_is_given(registry: Registry) -> None:
    """The old Ollama load path went straight to auto's default; the resolver plans as a generation does."""
    tools = [Tool(name="light", description="", parameters={"type": "object", "properties": {}})]
    with_tools = GenerationRequest(model="auto", messages=[], tools=tools)
    assert resolve_name(registry, "auto", with_tools).model == "big"
    asks = GenerationRequest(model="auto", messages=[Message(role="user", content="use the cloud")])
    resolved = resolve_name(registry, "auto:latest", asks)
    assert resolved.plan.targets == (Target("gpt-x", "cloud"), Target("big"))
    assert resolved.plan == plan_request(registry, "auto", asks)  # the planner's own answer, not a copy of it


def _calls(tree: ast.AST) -> set[str]:
    """Called names, with the receiver for method calls (``app[REGISTRY].lookup``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            found.add(ast.unparse(func))
    return found


@pytest.mark.parametrize("path", sorted(API.rglob("*.py")), ids=lambda p: str(p.relative_to(API)))
def test_the_fronts_resolve_names_only_through_the_one_resolver(path: Path) -> None:
    """No second resolver in the API layer: no planner call, no registry lookup of its own."""
    calls = _calls(ast.parse(path.read_text()))
    second = {c for c in calls if c.rpartition(".")[2] in ("plan_request", "_local_model_of", "bare_name")}
    second |= {c for c in calls if c.endswith(".lookup") and "CACHE" not in c and "_keys" not in c}
    assert not second, (path.name, second)
