"""Name -> model resolution and per-model defaults."""

from __future__ import annotations

import pytest

from zoe_edge.canonical import GenerationRequest, Message, Sampling
from zoe_edge.errors import ModelNotFound
from zoe_edge.registry import Registry, parse_registry
from zoe_edge.routing.resolve import with_model_defaults
from zoe_edge.routing.routes import Target, plan_request


@pytest.fixture
def registry() -> Registry:
    return parse_registry(
        {
            "default": "small",
            "models": {
                "small": {
                    "file": "s.gguf",
                    "max_tokens": 128,
                    "sampling": {"temperature": 0.2, "top_k": 20, "repeat_penalty": 1.1},
                },
                "big": {"file": "b.gguf"},
            },
            "aliases": {"chat": "small", "gpt-4o": "big"},
        }
    )


def test_resolve_model_name(registry: Registry) -> None:
    plan = plan_request(registry, "big", _request())
    assert plan.targets == (Target("big"),)
    assert "model" in plan.reason


def test_resolve_alias(registry: Registry) -> None:
    plan = plan_request(registry, "gpt-4o", _request())
    assert plan.targets == (Target("big"),)
    assert "alias" in plan.reason and "gpt-4o" in plan.reason


@pytest.mark.parametrize("name", ["gpt-5", "Small", "", "small "])
def test_resolve_unknown_lists_choices(registry: Registry, name: str) -> None:
    with pytest.raises(ModelNotFound) as caught:
        plan_request(registry, name, _request())
    exc = caught.value
    assert exc.status == 404
    assert exc.code == "model_not_found"
    assert exc.param == "model"
    assert repr(name) in exc.message
    assert "Available: small, big, chat, gpt-4o" in exc.message


def _request(**fields: object) -> GenerationRequest:
    return GenerationRequest(model="small", messages=[Message(role="user", content="hi")], **fields)


def test_with_model_defaults_fills_open_fields(registry: Registry) -> None:
    filled = with_model_defaults(_request(sampling=Sampling(temperature=1.0)), registry.models["small"])
    assert filled.max_tokens == 128
    assert filled.sampling.temperature == 1.0  # the request's own value wins
    assert filled.sampling.top_k == 20
    assert filled.sampling.repeat_penalty == 1.1
    assert filled.messages == [Message(role="user", content="hi")]


def test_with_model_defaults_keeps_request_values(registry: Registry) -> None:
    original = _request(max_tokens=5, sampling=Sampling(temperature=0.0, top_k=0))
    filled = with_model_defaults(original, registry.models["small"])
    assert filled.max_tokens == 5
    assert filled.sampling.temperature == 0.0
    assert filled.sampling.top_k == 0
    # the input request is not modified
    assert original.sampling.repeat_penalty is None


def test_with_model_defaults_uses_entry_defaults(registry: Registry) -> None:
    filled = with_model_defaults(_request(), registry.models["big"])
    assert filled.max_tokens == 512
    assert filled.sampling == Sampling(temperature=0.7, top_p=0.95, top_k=40, min_p=0.05)
