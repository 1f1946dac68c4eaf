"""Fixtures of the provider tests: the loopback fakes (``openai_fake``, ``anthropic_fake``)."""

from tests.fakes.fixtures import anthropic_fake, openai_fake

__all__ = ["anthropic_fake", "openai_fake"]
