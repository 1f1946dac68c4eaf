"""Loopback fakes of cloud APIs (OpenAI chat completions, Anthropic Messages) for provider tests."""
