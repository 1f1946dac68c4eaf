"""The small error hierarchy every layer raises and every front renders.

A front turns a :class:`ZoeError` into its own wire shape (OpenAI ``{"error": {...}}``, Ollama
``{"error": "..."}``); nothing below the fronts knows about HTTP bodies, only the status each
error deserves.
"""

from __future__ import annotations

import re
from enum import Enum


class Failure(str, Enum):
    """What went wrong, as one closed set: the wire ``code`` of an error is its failure's value.

    Fallback, retries, metric labels and the usage ledger read the kind, never message text.
    Each kind knows its HTTP status (:attr:`status`) and whether another route target may try
    after it (:attr:`fallback`, the reason shown in ``x-zoe-fallback-reason``).
    """

    # the local slot
    BUSY = "busy"
    QUEUE_FULL = "queue_full"
    MODEL_TOO_LARGE = "model_too_large"
    MODEL_MISSING = "model_missing"
    MODEL_LOAD_FAILED = "model_load_failed"
    WORKER_CRASHED = "worker_crashed"
    WORKER_TIMEOUT = "worker_timeout"
    WORKER_FAILED = "worker_failed"
    TOO_HOT = "too_hot"
    SHUTTING_DOWN = "shutting_down"
    # a cloud provider
    PROVIDER_MISSING = "provider_missing"
    PROVIDER_DISABLED = "provider_disabled"
    COOLING_DOWN = "cooling_down"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_OVERLOADED = "upstream_overloaded"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_RATE_LIMITED = "rate_limited"
    UPSTREAM_DISCONNECTED = "upstream_disconnected"
    UPSTREAM_INCOMPLETE = "upstream_incomplete"
    UPSTREAM_MALFORMED = "upstream_malformed"
    UPSTREAM_REJECTED = "upstream_rejected"
    # the client's key
    OVER_BUDGET = "budget_exceeded"
    KEY_RATE_LIMITED = "rate_limit_exceeded"
    # the routing as a whole
    NO_TARGET = "no_target_available"
    # the request itself: no other target would answer it differently
    INVALID_REQUEST = "invalid_request"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    UNAUTHORIZED = "invalid_api_key"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "model_not_found"
    TOO_LARGE = "request_too_large"
    TIMEOUT = "request_timeout"
    # anything else a target reported with a status of 500 or more
    SERVER_ERROR = "server_error"

    # the wire code wherever a kind is written out (str, format, JSON), on every Python this supports
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @property
    def status(self) -> int:
        return _STATUS.get(self, 503)

    @property
    def fallback(self) -> str | None:
        """Why the next route target may try after this failure; ``None``: the request itself is at fault."""
        return _FALLBACK.get(self)

    @classmethod
    def of(cls, code: str | None, status: int) -> Failure:
        """The kind behind a wire code, for codes from outside the set (an upstream's, a client key's) by status."""
        if code is not None:
            try:
                return cls(code)
            except ValueError:
                pass
        if status >= 500:
            return cls.SERVER_ERROR
        if status == 429:
            return cls.UPSTREAM_RATE_LIMITED
        return _BY_STATUS.get(status, cls.INVALID_REQUEST)


_FALLBACK: dict[Failure, str] = {
    Failure.BUSY: "local model busy",
    Failure.QUEUE_FULL: "local queue full",
    Failure.MODEL_TOO_LARGE: "model does not fit",
    Failure.MODEL_MISSING: "model file missing",
    Failure.MODEL_LOAD_FAILED: "model failed to load",
    Failure.WORKER_CRASHED: "worker crashed before the first token",
    Failure.WORKER_TIMEOUT: "worker timed out before the first token",
    Failure.WORKER_FAILED: "worker failed",
    Failure.TOO_HOT: "board over its thermal limit",
    Failure.SHUTTING_DOWN: "local model shutting down",
    Failure.PROVIDER_MISSING: "provider not configured",
    Failure.PROVIDER_DISABLED: "provider disabled",
    Failure.COOLING_DOWN: "provider cooling down",
    Failure.UPSTREAM_ERROR: "provider failed",
    Failure.UPSTREAM_UNREACHABLE: "provider unreachable",
    Failure.UPSTREAM_OVERLOADED: "provider overloaded",
    Failure.UPSTREAM_TIMEOUT: "provider timed out",
    Failure.UPSTREAM_RATE_LIMITED: "provider rate-limited",
    Failure.UPSTREAM_DISCONNECTED: "provider disconnected",
    Failure.UPSTREAM_INCOMPLETE: "provider ended early",
    Failure.UPSTREAM_MALFORMED: "provider answered malformed",
    Failure.OVER_BUDGET: "over the daily cloud budget",
    Failure.SERVER_ERROR: "server error",
}
_STATUS: dict[Failure, int] = {
    Failure.WORKER_FAILED: 500,
    Failure.UPSTREAM_ERROR: 502,
    Failure.UPSTREAM_DISCONNECTED: 502,
    Failure.UPSTREAM_INCOMPLETE: 502,
    Failure.UPSTREAM_MALFORMED: 502,
    Failure.UPSTREAM_TIMEOUT: 504,
    Failure.UPSTREAM_RATE_LIMITED: 429,
    Failure.UPSTREAM_REJECTED: 400,
    Failure.OVER_BUDGET: 429,
    Failure.KEY_RATE_LIMITED: 429,
    Failure.INVALID_REQUEST: 400,
    Failure.CONTEXT_LENGTH_EXCEEDED: 400,
    Failure.UNAUTHORIZED: 401,
    Failure.FORBIDDEN: 403,
    Failure.NOT_FOUND: 404,
    Failure.TOO_LARGE: 413,
    Failure.TIMEOUT: 408,
    Failure.SERVER_ERROR: 500,
}
_BY_STATUS: dict[int, Failure] = {
    400: Failure.INVALID_REQUEST,
    401: Failure.UNAUTHORIZED,
    403: Failure.FORBIDDEN,
    404: Failure.NOT_FOUND,
    408: Failure.TIMEOUT,
    413: Failure.TOO_LARGE,
}


class ZoeError(Exception):
    """Base class: carries the HTTP status and OpenAI-style type/code a front needs."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    # which route target answered with this error (``local:<model>``, ``<provider>:<model>``), when one did
    target: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = str(code)
        self.retry_after = retry_after

    @property
    def kind(self) -> Failure:
        return Failure.of(self.code, self.status)


class InvalidRequest(ZoeError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ZoeError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ZoeError):
    status = 403
    type = "permission_error"


class ModelNotFound(ZoeError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(ZoeError):
    """A known path asked with a method it does not answer; the response's ``Allow`` lists those it does."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed


class PayloadTooLarge(ZoeError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(ZoeError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class TooManyRequests(ZoeError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class ServiceUnavailable(ZoeError):
    """The local model cannot serve now (busy, loading failed, shutting down); retry later."""

    status = 503
    type = "service_unavailable"


class ModelLoadFailed(ServiceUnavailable):
    code = "model_load_failed"


class WorkerFailed(ZoeError):
    """The worker process died or broke protocol while serving a request."""

    status = 500
    type = "server_error"
    code = "worker_failed"


def error_for_status(status: int, message: str, *, code: str | None = None) -> ZoeError:
    """The hierarchy member for an HTTP status reported across a process boundary."""
    classes: dict[int, type[ZoeError]] = {
        400: InvalidRequest,
        401: Unauthorized,
        403: Forbidden,
        404: ModelNotFound,
        413: PayloadTooLarge,
        429: TooManyRequests,
        503: ServiceUnavailable,
    }
    cls = classes.get(status, ZoeError)
    retry = 5.0 if cls is ServiceUnavailable else None
    return cls(message, code=code, retry_after=retry)


_LONG_WORD = re.compile(r"\S{121,}")


def _cut(match: re.Match[str]) -> str:
    return f"{match.group()[:100]}... ({len(match.group())} characters)"


class RegistryError(Exception):
    """``models.yaml`` is invalid; ``problems`` holds one readable line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        # a name or value thousands of characters long would bury the line that names it
        self.problems = [_LONG_WORD.sub(_cut, p) for p in problems]
        problems = self.problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")
