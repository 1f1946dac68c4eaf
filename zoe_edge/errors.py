"""The small error hierarchy every layer raises and every front renders.

A front turns a :class:`ZoeError` into its own wire shape (OpenAI ``{"error": {...}}``, Ollama
``{"error": "..."}``); nothing below the fronts knows about HTTP bodies, only the status each
error deserves.
"""

from __future__ import annotations

import re


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
            self.code = code
        self.retry_after = retry_after


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


class NotImplementedHere(ZoeError):
    """A documented endpoint this appliance does not offer (yet); the message says what to use."""

    status = 501
    type = "not_implemented"
    code = "not_implemented"


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
