"""The ``cache:`` section of ``models.yaml`` and the per-request ``cache`` controls clients may send."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MiB = 1024 * 1024
MAX_REQUEST_TTL = 86400.0

# a route's say: always cache, never cache, or only when the answer is reproducible (the default)
RouteCacheMode = bool | Literal["deterministic"]


def _seconds(value: Any, unbounded: str) -> Any:
    """A duration string such as '10m' as seconds; ``unbounded`` is the error for one with no end."""
    if not isinstance(value, str):
        return value
    from zoe_edge.registry import parse_duration  # the registry imports this module

    seconds = parse_duration(value)
    if seconds is None:
        raise ValueError(unbounded)
    return seconds


class CacheSettings(BaseModel):
    """Exact-match response cache. Absent from the registry: off. ``cache: {}``: in-memory with defaults.

    The memory backend never holds more than ``max_entries`` answers nor more than ``max_bytes`` of
    stored payload; an answer bigger than ``max_item_bytes`` is not stored at all. Redis entries
    always carry a TTL, so a shared Redis never fills with entries nobody expires.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "redis", "off"] = "memory"
    url: str | None = Field(default=None, description="redis://[:password@]host:port/db, for backend redis")
    ttl: float = Field(default=600.0, gt=0, le=30 * 86400, description="seconds an answer stays valid")
    max_entries: int = Field(default=500, ge=1, le=1_000_000)
    max_bytes: int = Field(default=32 * MiB, ge=1024, le=16 * 1024 * MiB)
    max_item_bytes: int = Field(default=1 * MiB, ge=256)
    timeout: float = Field(default=0.25, gt=0, le=10, description="seconds for any one Redis call")
    retry_interval: float = Field(default=2.0, gt=0, le=300, description="seconds between probes of a failed Redis")
    key_prefix: str = Field(default="zoe-edge:cache:", max_length=128)

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> Any:
        return _seconds(value, "the cache needs a finite ttl such as '10m'")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use redis://host:port/db, rediss://... (TLS) or unix:///path/to/socket")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CacheSettings:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs a 'url' such as redis://127.0.0.1:6379/0")
        if self.max_item_bytes > self.max_bytes:
            raise ValueError(f"max_item_bytes ({self.max_item_bytes}) must not exceed max_bytes ({self.max_bytes})")
        return self

    @property
    def enabled(self) -> bool:
        return self.backend != "off"

    def safe_url(self) -> str | None:
        """The URL with any password replaced, fit for logs and ``/admin/status``."""
        if self.url is None:
            return None
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        user = parts.username or ""
        host = parts.hostname or ""
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


class CacheControls(BaseModel):
    """A request body's ``cache`` object, as in LiteLLM: ``{"no-cache": true, "no-store": true, "ttl": 60}``.

    ``no-cache``: do not answer from the cache (the fresh answer is stored); ``no-store``: do not
    store this answer; ``ttl``: how long this answer stays valid, in seconds (or ``"5m"``).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    no_cache: bool = Field(default=False, alias="no-cache")
    no_store: bool = Field(default=False, alias="no-store")
    ttl: float | None = Field(default=None, gt=0, le=MAX_REQUEST_TTL)

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("ttl must be a number of seconds such as 60 or '5m'")
        return _seconds(value, "ttl must be a finite number of seconds such as 60 or '5m'")
