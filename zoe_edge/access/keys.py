"""API keys: the ``keys:`` section of ``models.yaml`` plus ``ZOE_API_KEY`` / ``ZOE_ADMIN_KEY``.

A key's secret never sits in the registry in the clear: an entry's ``key`` is ``sha256:<hex>``
(the hash of the key), ``env:NAME`` (read from the environment at start) or ``file:PATH`` (read
from a file at start). Only SHA-256 digests are kept in memory; a presented key is hashed and
compared against every digest in constant time, so neither timing nor logs reveal anything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from zoe_edge.canonical import Priority

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# ids of the keys that come from the daemon's settings rather than the registry
DEFAULT_ID = "default"
ADMIN_ID = "admin"


class KeyEntry(BaseModel):
    """One key in the registry's ``keys:`` mapping (id -> entry)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="sha256:<hex digest>, env:VARIABLE or file:/path/to/file")
    role: Literal["client", "admin"] = "client"
    aliases: list[str] = Field(default_factory=lambda: ["*"], description="names this key may ask for; * = all")
    rpm: int | None = Field(default=None, ge=1, description="generation requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="prompt + completion tokens per minute")
    daily_budget_usd: float | None = Field(default=None, ge=0, description="cloud spend per UTC day")
    # the default for this key's requests on the local slot; a route's priority and the header beat it
    priority: Priority | None = None

    @field_validator("key")
    @classmethod
    def _source(cls, value: str) -> str:
        kind, sep, rest = value.partition(":")
        if not sep or kind not in ("sha256", "env", "file") or not rest:
            raise ValueError("use sha256:<hex digest>, env:VARIABLE or file:/path (never the key itself)")
        if kind == "sha256" and not _HEX64.match(rest.lower()):
            raise ValueError("sha256: needs the 64-character hex digest of the key")
        return value


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.strip().encode()).digest()


@dataclass(frozen=True)
class ClientKey:
    """A known key, by id; the secret itself is not kept, only its digest."""

    id: str
    role: Literal["client", "admin"] = "client"
    aliases: frozenset[str] = frozenset({"*"})
    rpm: int | None = None
    tpm: int | None = None
    daily_budget_usd: float | None = None
    priority: Priority | None = None
    digest: bytes = field(default=b"", repr=False)

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, name: str) -> bool:
        return "*" in self.aliases or name in self.aliases


def resolve_digest(key_id: str, source: str, base: Path) -> bytes:
    """The digest an entry's ``key`` stands for; raises ``ValueError`` saying what is missing (never the key)."""
    kind, _, rest = source.partition(":")
    if kind == "sha256":
        return bytes.fromhex(rest.lower())
    if kind == "env":
        value = os.environ.get(rest, "").strip()
        if not value:
            raise ValueError(f"key {key_id!r}: environment variable {rest} is not set")
        return digest(value)
    path = Path(os.path.expanduser(rest))
    path = path if path.is_absolute() else base / path
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"key {key_id!r}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise ValueError(f"key {key_id!r}: {path} is empty")
    return digest(value)


class KeyTable:
    """Every key the daemon accepts. Empty means no authentication is configured."""

    def __init__(self, keys: list[ClientKey]) -> None:
        self.keys = keys

    @classmethod
    def build(
        cls,
        entries: dict[str, KeyEntry],
        base: Path,
        api_key: SecretStr | None = None,
        admin_key: SecretStr | None = None,
    ) -> KeyTable:
        keys: list[ClientKey] = []
        if api_key is not None:
            keys.append(ClientKey(DEFAULT_ID, digest=digest(api_key.get_secret_value())))
        if admin_key is not None:
            keys.append(ClientKey(ADMIN_ID, role="admin", digest=digest(admin_key.get_secret_value())))
        for key_id, entry in entries.items():
            keys.append(
                ClientKey(
                    key_id,
                    role=entry.role,
                    aliases=frozenset(entry.aliases),
                    rpm=entry.rpm,
                    tpm=entry.tpm,
                    daily_budget_usd=entry.daily_budget_usd,
                    priority=entry.priority,
                    digest=resolve_digest(key_id, entry.key, base),
                )
            )
        return cls(keys)

    @property
    def has_client_keys(self) -> bool:
        return any(not k.admin for k in self.keys)

    @property
    def has_admin_keys(self) -> bool:
        return any(k.admin for k in self.keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def lookup(self, presented: str) -> ClientKey | None:
        """The key ``presented`` is, or ``None``; looks at every entry so timing does not depend on which matched."""
        candidate = digest(presented)
        found: ClientKey | None = None
        for key in self.keys:
            if hmac.compare_digest(candidate, key.digest) and found is None:
                found = key
        return found
