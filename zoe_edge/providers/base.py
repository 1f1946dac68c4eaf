"""What every cloud provider shares: errors, retries, cooldown, timeouts and the SSE reader.

A provider turns a canonical :class:`GenerationRequest` into one upstream HTTP request and the
upstream's stream back into canonical events, with the same contract as the local supervisor's
``generate``: failures before the first event are raised (:class:`ProviderError`, after retries),
failures after it arrive as one :class:`ErrorEvent` that ends the stream. Output is never spliced
from two attempts: retries only happen while nothing has been yielded.

Subclasses only build the upstream request and parse its wire format; everything about patience
(timeouts, backoff, ``Retry-After``, cooldown) lives here.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import email.utils
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import aiohttp

from zoe_edge.canonical import ErrorEvent, Event, Finish, GenerationRequest, Message
from zoe_edge.errors import Failure, ZoeError
from zoe_edge.providers.config import ProviderConfig

log = logging.getLogger("zoe_edge.providers")

USER_AGENT = "zoe-edge/0.1"
READ_BUFSIZE = 2**20  # one SSE line may carry a whole tool call


# --- errors -----------------------------------------------------------------------------------


class ProviderError(ZoeError):
    """An upstream could not serve a request before its first event.

    ``retryable``: the same upstream may succeed later (429, 5xx, 529, timeouts, connection
    errors); ``retry_after``: seconds the upstream asked us to wait, if it said so;
    ``upstream_status``: the HTTP status the upstream answered, ``None`` when it never answered.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        code: str = "upstream_error",
        retryable: bool = False,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.status = status
        self.type = {429: "rate_limit_error", 503: "service_unavailable", 400: "invalid_request_error"}.get(
            status, "upstream_error"
        )
        self.retryable = retryable
        self.upstream_status = upstream_status
        self.provider = provider

    @property
    def counts_as_failure(self) -> bool:
        """Whether this says something about the provider's health (a rejected request does not)."""
        return self.status != 400 and self.kind not in (Failure.COOLING_DOWN, Failure.PROVIDER_DISABLED)


class ProviderStalled(ProviderError):
    """The upstream went quiet for longer than ``idle_timeout`` in the middle of a response."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=504, code="upstream_timeout", retryable=True)


class ProviderMalformed(ProviderError):
    """The upstream sent something that is not its own wire format."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502, code="upstream_malformed", retryable=True)


def retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def error_from_status(
    status: int, message: str, *, retry_after: float | None = None, provider: str | None = None
) -> ProviderError:
    """The :class:`ProviderError` for an upstream's HTTP error status."""
    if status == 429:
        return ProviderError(
            message, status=429, code="rate_limited", retryable=True, retry_after=retry_after,
            upstream_status=status, provider=provider,
        )  # fmt: skip
    if status in (503, 529):
        return ProviderError(
            message, status=503, code="upstream_overloaded", retryable=True, retry_after=retry_after,
            upstream_status=status, provider=provider,
        )  # fmt: skip
    if retryable_status(status):
        return ProviderError(
            message, status=502, code="upstream_error", retryable=True, retry_after=retry_after,
            upstream_status=status, provider=provider,
        )  # fmt: skip
    code = {
        400: "upstream_rejected", 413: "upstream_rejected", 422: "upstream_rejected",
        401: "upstream_auth_failed", 403: "upstream_auth_failed", 404: "upstream_not_found",
    }.get(status, "upstream_error")  # fmt: skip
    return ProviderError(
        message, status=400 if code == "upstream_rejected" else 502, code=code, retryable=False,
        upstream_status=status, provider=provider,
    )  # fmt: skip


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (delta seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000.0)
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --- wire helpers shared by providers ---------------------------------------------------------


async def sse_events(content: aiohttp.StreamReader, idle_timeout: float) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` pairs of a Server-Sent Events body; a gap over ``idle_timeout`` raises."""
    event, data = "", list[str]()
    while True:
        try:
            raw = await asyncio.wait_for(content.readline(), idle_timeout)
        except asyncio.TimeoutError:
            raise ProviderStalled(f"the upstream sent nothing for {idle_timeout:g} s") from None
        if not raw:
            break
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def load_json_object(data: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise ProviderMalformed(f"the upstream sent {what} that is not JSON: {data[:120]!r}") from None
    if not isinstance(value, dict):
        raise ProviderMalformed(f"the upstream sent {what} that is not a JSON object: {data[:120]!r}")
    return value


def parse_arguments(text: str, name: str) -> dict[str, Any] | ErrorEvent:
    """A tool call's assembled JSON arguments as an object, or the ErrorEvent saying why not."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return ErrorEvent(
            f"the upstream's call to {name!r} has arguments that are not a JSON object: {text[:200]!r}",
            code="upstream_malformed",
            status=502,
        )
    return value


def with_tool_ids(messages: list[Message]) -> list[Message]:
    """Fill in missing call ids and pair id-less tool results with the calls they answer, in order.

    The Ollama front carries tool results without ids; OpenAI and Anthropic both require them.
    """
    pending: deque[str] = deque()
    out: list[Message] = []
    for i, m in enumerate(messages):
        if m.role == "assistant" and m.tool_calls:
            pending.clear()
            calls = []
            for j, call in enumerate(m.tool_calls):
                cid = call.id or f"call_{i}_{j}"
                calls.append(call.model_copy(update={"id": cid}))
                pending.append(cid)
            m = m.model_copy(update={"tool_calls": calls})
        elif m.role == "tool":
            if m.tool_call_id:
                with contextlib.suppress(ValueError):
                    pending.remove(m.tool_call_id)
            else:
                m = m.model_copy(update={"tool_call_id": pending.popleft() if pending else f"call_{i}"})
        out.append(m)
    return out


def request_messages(req: GenerationRequest) -> list[Message]:
    """The conversation to send: the chat messages, or a raw prompt as one user turn."""
    if req.messages is not None:
        return with_tool_ids(req.messages)
    return [Message(role="user", content=req.prompt or "")]


# --- the provider -----------------------------------------------------------------------------


class Provider(abc.ABC):
    """One configured upstream. Safe to share between concurrent requests."""

    def __init__(self, name: str, config: ProviderConfig, *, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.config = config
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._session: aiohttp.ClientSession | None = None
        self._failures = 0
        self._cool_until = 0.0

    # -- state the router reads

    def api_key(self) -> str | None:
        if self.config.api_key_env is None:
            return None
        return self._env.get(self.config.api_key_env, "").strip() or None

    def disabled_reason(self) -> str | None:
        """Why this provider cannot be used at all (skip it, say so in ``doctor``), or ``None``."""
        env = self.config.api_key_env
        if env is not None and self.api_key() is None:
            return f"{env} is not set"
        return None

    def cooling_down(self) -> float | None:
        """Seconds left of a cooldown after repeated failures, or ``None`` when usable."""
        left = self._cool_until - time.monotonic()
        return left if left > 0 else None

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def state(self) -> dict[str, Any]:
        """A snapshot for ``doctor``, health endpoints and logs (never includes the key)."""
        return {
            "name": self.name,
            "type": self.config.type,
            "base_url": self.config.base_url,
            "disabled": self.disabled_reason(),
            "cooling_down_s": self.cooling_down(),
            "consecutive_failures": self._failures,
        }

    def record_success(self) -> None:
        self._failures = 0

    def record_failure(self, why: str) -> None:
        self._failures += 1
        if self._failures >= self.config.cooldown_after and self.config.cooldown > 0:
            self._cool_until = time.monotonic() + self.config.cooldown
            # half-open afterwards: one more failure after the cooldown starts the next one
            self._failures = self.config.cooldown_after - 1
            log.warning(
                "provider %s: %d consecutive failures, cooling down for %g s (last: %s)",
                self.name, self.config.cooldown_after, self.config.cooldown, why,
            )  # fmt: skip

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- what subclasses provide

    @abc.abstractmethod
    def build_request(self, model: str, req: GenerationRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        """``(url, headers, json body)`` of the upstream request for ``req`` on upstream ``model``."""

    @abc.abstractmethod
    def parse_stream(self, events: AsyncIterator[tuple[str, str]]) -> AsyncGenerator[Event, None]:
        """Canonical events from the upstream's SSE ``(event, data)`` pairs, ending with Finish or ErrorEvent."""

    @abc.abstractmethod
    def parse_whole(self, body: dict[str, Any]) -> list[Event]:
        """Canonical events from a non-streamed answer (an upstream that ignored ``stream: true``)."""

    @abc.abstractmethod
    def error_message(self, body: Any) -> str | None:
        """The human message inside an upstream error body, if it has the expected shape."""

    # -- the request

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeout),
                headers={"User-Agent": USER_AGENT},
                read_bufsize=READ_BUFSIZE,
            )
        return self._session

    async def generate(self, model: str, req: GenerationRequest) -> AsyncGenerator[Event, None]:
        """Stream one generation of upstream ``model``; same contract as the supervisor's ``generate``.

        Raises :class:`ProviderError` before the first event (after retries); afterwards a failure
        is yielded as one :class:`ErrorEvent` and the stream ends. Close the iterator
        (``contextlib.aclosing``) to abandon a request: the upstream connection is released.
        """
        reason = self.disabled_reason()
        if reason is not None:
            raise ProviderError(
                f"provider {self.name} is disabled: {reason}", status=503, code="provider_disabled", provider=self.name
            )
        left = self.cooling_down()
        if left is not None:
            raise ProviderError(
                f"provider {self.name} is cooling down after repeated failures ({left:.0f} s left)",
                status=503, code="cooling_down", retryable=True, retry_after=left, provider=self.name,
            )  # fmt: skip
        url, headers, body = self.build_request(model, req)
        resp, events, first = await self._start(url, headers, body)
        try:
            event: Event = first
            while True:
                yield event
                if isinstance(event, Finish):
                    self.record_success()
                    return
                if isinstance(event, ErrorEvent):
                    self.record_failure(event.message)
                    return
                event = await self._next_event(events)
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()
            resp.close()

    async def _next_event(self, events: AsyncGenerator[Event, None]) -> Event:
        """The next event after the first; every failure becomes an ErrorEvent, never an exception."""
        try:
            event = await anext(events)
            if isinstance(event, ErrorEvent) and not event.message.startswith(self.name):
                event = dataclasses.replace(event, message=f"{self.name}: {event.message}")
            return event
        except StopAsyncIteration:
            return ErrorEvent(
                f"{self.name}: the upstream ended the stream early", code="upstream_incomplete", status=502
            )
        except ProviderError as exc:
            message = exc.message if exc.message.startswith(self.name) else f"{self.name}: {exc.message}"
            return ErrorEvent(message, code=exc.code or "upstream_error", status=exc.status)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            return ErrorEvent(
                f"{self.name}: the upstream connection broke mid-stream ({type(exc).__name__}: {exc})",
                code="upstream_disconnected",
                status=502,
            )
        except Exception as exc:  # a parser surprise must end the stream cleanly, not crash the front
            log.exception("provider %s: failed to parse the upstream stream", self.name)
            return ErrorEvent(f"{self.name}: unreadable upstream stream ({exc})", code="upstream_malformed", status=502)

    async def _start(
        self, url: str, headers: dict[str, str], body: dict[str, Any]
    ) -> tuple[aiohttp.ClientResponse, AsyncGenerator[Event, None], Event]:
        """Send the request and read up to the first event, retrying with backoff; raise when out of tries."""
        cfg = self.config
        err: ProviderError | None = None
        for attempt in range(cfg.retries + 1):
            if err is not None:
                delay = min(cfg.max_backoff, max(cfg.backoff * 2 ** (attempt - 1), err.retry_after or 0.0))
                log.info(
                    "provider %s: attempt %d failed (%s); retrying in %.2f s", self.name, attempt, err.message, delay
                )
                await asyncio.sleep(delay)
            try:
                return await asyncio.wait_for(self._attempt(url, headers, body), cfg.timeout)
            except asyncio.TimeoutError:
                err = ProviderError(
                    f"{self.name}: no answer within {cfg.timeout:g} s",
                    status=504, code="upstream_timeout", retryable=True, provider=self.name,
                )  # fmt: skip
            except ProviderError as exc:
                err = exc
            except aiohttp.ClientConnectorError as exc:
                err = ProviderError(
                    f"{self.name}: cannot connect to {cfg.base_url} ({exc.os_error or exc})",
                    code="upstream_unreachable", retryable=True, provider=self.name,
                )  # fmt: skip
            except (aiohttp.ClientError, OSError) as exc:
                err = ProviderError(
                    f"{self.name}: connection to the upstream failed ({type(exc).__name__}: {exc})",
                    code="upstream_disconnected", retryable=True, provider=self.name,
                )  # fmt: skip
            err.provider = self.name
            if not err.message.startswith(self.name):
                err.message = f"{self.name}: {err.message}"
            if not err.retryable:
                break
        assert err is not None
        if err.counts_as_failure:
            self.record_failure(err.message)
        raise err

    async def _attempt(
        self, url: str, headers: dict[str, str], body: dict[str, Any]
    ) -> tuple[aiohttp.ClientResponse, AsyncGenerator[Event, None], Event]:
        resp = await self._get_session().post(url, json=body, headers=headers)
        try:
            if resp.status != 200:
                raise await self._http_error(resp)
            events = self._events(resp)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise ProviderError(
                    f"{self.name}: the upstream ended its answer before any output",
                    code="upstream_incomplete", retryable=True,
                ) from None  # fmt: skip
            except BaseException:
                await events.aclose()
                raise
            if isinstance(first, ErrorEvent):
                await events.aclose()
                raise ProviderError(
                    first.message if first.message.startswith(self.name) else f"{self.name}: {first.message}",
                    status=first.status, code=first.code, retryable=retryable_status(first.status),
                )  # fmt: skip
            return resp, events, first
        except BaseException:
            resp.close()
            raise

    async def _http_error(self, resp: aiohttp.ClientResponse) -> ProviderError:
        try:
            text = (await asyncio.wait_for(resp.content.read(65536), self.config.idle_timeout)).decode(
                "utf-8", errors="replace"
            )
        except (aiohttp.ClientError, asyncio.TimeoutError):
            text = ""
        try:
            detail = self.error_message(json.loads(text))
        except ValueError:
            detail = None
        detail = detail or text.strip()[:300] or resp.reason or "no details"
        return error_from_status(
            resp.status,
            f"{self.name}: the upstream answered {resp.status}: {detail}",
            retry_after=parse_retry_after(resp.headers),
            provider=self.name,
        )

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncGenerator[Event, None]:
        try:
            if resp.content_type == "application/json":
                raw = await asyncio.wait_for(resp.read(), self.config.idle_timeout)
                for event in self.parse_whole(load_json_object(raw.decode("utf-8", errors="replace"), "an answer")):
                    yield event
                return
            stream = self.parse_stream(sse_events(resp.content, self.config.idle_timeout))
            async with contextlib.aclosing(stream) as it:
                async for event in it:
                    yield event
        except (ProviderError, aiohttp.ClientError, OSError, asyncio.TimeoutError):
            raise
        except Exception as exc:  # the wire format held a surprise (a list where an object belongs, ...)
            raise ProviderMalformed(f"unreadable upstream answer ({type(exc).__name__}: {exc})") from exc
