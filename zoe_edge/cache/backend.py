"""What the response cache needs of a store, and the failure every backend reports the same way."""

from __future__ import annotations

from typing import Any, Protocol


class BackendFailed(Exception):
    """The store could not answer (unreachable, timed out, refused); the request goes on without it."""


class Backend(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None:
        """The stored payload, ``None`` when absent or expired; raises :class:`BackendFailed`."""

    async def put(self, key: str, value: bytes, ttl: float) -> bool:
        """Store for ``ttl`` seconds; ``False`` when the payload is too large to keep; raises :class:`BackendFailed`."""

    def problem(self) -> str | None:
        """Why the store is being skipped right now (a failed Redis), or ``None`` when it is usable."""

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...
