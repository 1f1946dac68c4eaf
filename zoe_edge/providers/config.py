"""Configuration of one cloud (or peer) provider, as the registry's ``providers:`` section holds it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Price(BaseModel):
    """What one model costs, in US dollars per million tokens (for the usage ledger and key budgets)."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


class ProviderConfig(BaseModel):
    """One upstream: where it is, how its key is found, and how patient to be with it.

    ``api_key_env`` names an environment variable (the key itself never sits in the registry);
    ``None`` is for keyless upstreams such as another zoe-edge on the LAN. A provider whose variable
    is unset is *disabled*: it is skipped by routing and reported by ``zoe-edge doctor``.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["openai", "anthropic"]
    base_url: str = Field(min_length=1)
    api_key_env: str | None = None
    timeout: float = Field(default=30.0, gt=0, description="seconds for connect + first event")
    idle_timeout: float = Field(default=60.0, gt=0, description="longest gap between stream chunks, seconds")
    retries: int = Field(default=2, ge=0, le=10, description="extra attempts before the first event")
    backoff: float = Field(default=0.5, ge=0, description="first retry delay; doubles per attempt, seconds")
    max_backoff: float = Field(default=10.0, ge=0, description="cap on any retry delay incl. Retry-After")
    cooldown_after: int = Field(default=3, ge=1, description="consecutive failed requests that start a cooldown")
    cooldown: float = Field(default=60.0, ge=0, description="seconds a provider is skipped after repeated failures")
    max_tokens_default: int = Field(default=1024, ge=1, description="max_tokens when a request sets none")
    extra_headers: dict[str, str] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=dict, description="model -> price; unpriced models cost 0")
    sampling_extensions: bool = Field(
        default=False,
        description="openai type: also send top_k/min_p/repeat_penalty (vLLM, llama.cpp, another zoe-edge)",
    )

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")


def parse_providers(raw: dict[str, object]) -> dict[str, ProviderConfig]:
    """Validate a ``providers:`` mapping (name -> settings); raises pydantic's ValidationError."""
    return {name: ProviderConfig.model_validate(value) for name, value in raw.items()}
