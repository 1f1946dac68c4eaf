"""Redis as a shared cache store, written so that Redis can never make a request fail or stall for long.

Every call has a short timeout and no retries. The first failure marks the store unhealthy: from
then on requests skip Redis entirely (no waiting on a dead or frozen server) while a background
probe pings it every ``retry_interval`` seconds; the first answered ping turns caching back on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from zoe_edge.cache.backend import BackendFailed

log = logging.getLogger("zoe_edge.cache")

# while Redis stays down, repeat the warning at most this often (the first failure always logs)
WARN_EVERY_S = 60.0


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    kind = "timed out" if isinstance(exc, TimeoutError | asyncio.TimeoutError) else type(exc).__name__
    return f"{kind}: {text}" if text else kind


class RedisCache:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        safe_url: str,
        timeout: float,
        retry_interval: float,
        max_item_bytes: int,
    ) -> None:
        self.safe_url = safe_url
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.max_item_bytes = max_item_bytes
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.healthy = True
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # unix time
        self.down_since: float | None = None
        self.failures = 0
        self.too_large = 0
        self._last_warning = 0.0
        self._probe: asyncio.Task[None] | None = None

    async def _call(self, what: str, coro: Any) -> Any:
        if not self.healthy:
            coro.close()
            raise BackendFailed(self.problem() or "redis unavailable")
        try:
            # the socket timeout covers each read; this bounds the whole call, connect included
            return await asyncio.wait_for(coro, self.timeout * 2)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(what, exc)
            raise BackendFailed(self.problem() or describe(exc)) from None

    async def get(self, key: str) -> bytes | None:
        value = await self._call("GET", self._client.get(key))
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> bool:
        if len(key) + len(value) > self.max_item_bytes:
            self.too_large += 1
            return False
        await self._call("SET", self._client.set(key, value, px=max(1, int(ttl * 1000))))
        return True

    def _failed(self, what: str, exc: BaseException) -> None:
        now = time.time()
        self.failures += 1
        self.last_error = f"{what} {describe(exc)}"
        self.last_error_at = now
        if not self.healthy:
            return
        self.healthy = False
        self.down_since = now
        self._last_warning = time.monotonic()
        log.warning(
            "redis cache at %s failed (%s); requests bypass the cache and Redis is probed every %g s",
            self.safe_url,
            self.last_error,
            self.retry_interval,
        )
        self._probe = asyncio.create_task(self._recover(), name="redis-cache-probe")

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval)
            try:
                await asyncio.wait_for(self._client.ping(), self.timeout * 2)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self.failures += 1
                self.last_error = f"PING {describe(exc)}"
                self.last_error_at = time.time()
                if time.monotonic() - self._last_warning >= WARN_EVERY_S:
                    self._last_warning = time.monotonic()
                    log.warning("redis cache at %s still unavailable: %s", self.safe_url, self.last_error)
                continue
            down = time.time() - (self.down_since or time.time())
            self.healthy = True
            self.down_since = None
            log.warning("redis cache at %s answers again after %.1f s; caching resumed", self.safe_url, down)
            return

    def problem(self) -> str | None:
        if self.healthy:
            return None
        return f"redis at {self.safe_url} unavailable ({self.last_error})"

    def status(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "url": self.safe_url,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "down_since": self.down_since,
            "failures": self.failures,
            "too_large": self.too_large,
            "timeout_s": self.timeout,
        }

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
