"""Cloud (and peer) providers: the canonical request out to an upstream API, its stream back in.

The routing layer calls :func:`make_provider` once per configured provider and then, per request,
checks :meth:`Provider.disabled_reason` and :meth:`Provider.cooling_down` before
``Provider.generate(model, request)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from zoe_edge.providers.anthropic import AnthropicProvider
from zoe_edge.providers.base import Provider, ProviderError, ProviderMalformed, ProviderStalled
from zoe_edge.providers.config import ProviderConfig, parse_providers
from zoe_edge.providers.openai import OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "ProviderMalformed",
    "ProviderStalled",
    "make_provider",
    "parse_providers",
]


def make_provider(name: str, config: ProviderConfig, *, env: Mapping[str, str] | None = None) -> Provider:
    """The provider for ``config.type``; ``env`` replaces ``os.environ`` for the key lookup (tests)."""
    classes: dict[str, type[Provider]] = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}
    return classes[config.type](name, config, env=env)
