"""Request ids, API-key auth, and errors rendered in the caller's wire format; one log line per request."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from zoe_edge.access.keys import ClientKey, KeyTable
from zoe_edge.api import anthropic, ollama, openai, telemetry
from zoe_edge.api.common import CONFIG, CONTEXT, OBSERVER, SETTINGS, context
from zoe_edge.config import is_loopback
from zoe_edge.errors import (
    Forbidden,
    MethodNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    ZoeError,
)
from zoe_edge.service import RequestContext
from zoe_edge.usage.observer import CLIENT_CLOSED
from zoe_edge.usage.record import GENERATION_PATHS

log = logging.getLogger("zoe_edge.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# reachable without a key: liveness probes from systemd or a load balancer carry none
PUBLIC_PATHS = frozenset({"/health"})
# what a browser opens: a page load cannot carry a bearer token, so HTTP Basic (password = API key) works too
BROWSER_PATHS = ("/dashboard", "/api/telemetry")
BASIC_CHALLENGE = 'Basic realm="zoe-edge", charset="UTF-8"'


def _from_http(exc: web.HTTPException, request: web.Request) -> ZoeError:
    if isinstance(exc, web.HTTPNotFound):
        return ModelNotFound(f"no such endpoint: {request.method} {request.path}", code="unknown_url")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        # a 405 with the methods the path answers (RFC 9110); aiohttp answers HEAD wherever it answers GET
        allowed = tuple(sorted(exc.allowed_methods))
        return MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}", allowed=allowed
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("request body is too large")
    if exc.status == 403:
        return Forbidden(exc.reason)
    err = ZoeError(exc.reason)
    err.status = exc.status
    return err


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, error rendering and the access log line, outermost so it sees every outcome."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    ctx = request[CONTEXT] = RequestContext(request_id)
    started = ctx.started
    # generation requests get a usage record (ledger row + metrics), failed ones included
    rec = None
    observer = request.app.get(OBSERVER)
    if observer is not None and request.method == "POST" and request.path in GENERATION_PATHS:
        rec = ctx.usage = observer.start(request_id, request.path)
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        if observer is not None and rec is not None:
            rec.status = rec.status or CLIENT_CLOSED
            rec.error = rec.error or "client went away"
            observer.finish_nowait(rec, ctx.cache)
        log.info(
            "%s %s: client went away after %.1fms; request cancelled id=%s",
            request.method,
            request.path,
            (time.perf_counter() - started) * 1000,
            request_id,
        )
        raise
    except ZoeError as exc:
        response = _render_error(request, exc)
        _log_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = _from_http(exc, request)
        response = _render_error(request, err)
        _log_error(request, err)
    except Exception as exc:  # a bug in a handler: logged with its traceback, answered in the dialect
        log.exception("%s %s: unhandled %s (id=%s)", request.method, request.path, type(exc).__name__, request_id)
        err = ZoeError(f"internal error ({type(exc).__name__}); the daemon keeps serving (log id {request_id})")
        response = _render_error(request, err)
        context(request).error = err.message
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    if observer is not None and rec is not None and not rec.done:
        # a prepared stream whose record is still open ended before its last event: the client left
        rec.status = CLIENT_CLOSED if response.prepared and response.status == 200 else response.status
        if ctx.error is not None:
            rec.error = ctx.error
        # committed before the response leaves: an answered request is in the ledger
        await observer.finish(rec, ctx.cache)
    telemetry.record_request(request, response.status, started)
    log.info(
        "%s %s %d %.1fms id=%s model=%s",
        request.method,
        request.path,
        response.status,
        (time.perf_counter() - started) * 1000,
        request_id,
        ctx.served_by or "-",
    )
    return response


def _render_error(request: web.Request, exc: ZoeError) -> web.Response:
    """Each client family gets errors in its own shape: Ollama's under /api, Anthropic's under /v1/messages,
    OpenAI's elsewhere."""
    if request.path.startswith("/api/") and not request.path.startswith("/api/telemetry"):
        response = ollama.error_response(exc)
    elif request.path == "/v1/messages" or request.path.startswith("/v1/messages/"):
        response = anthropic.error_response(exc, context(request).request_id)
    else:
        response = openai.error_response(exc)
    # where the request was routed, when it got that far (x-zoe-route, x-zoe-served-by)
    response.headers.update(context(request).route_headers)
    if isinstance(exc, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(exc.allowed)
    return response


def _log_error(request: web.Request, exc: ZoeError) -> None:
    ctx = context(request)
    ctx.error = exc.message[:500]
    level = logging.ERROR if exc.status >= 500 else logging.WARNING
    log.log(
        level,
        "%s %s -> %d %s: %s (id=%s)",
        request.method,
        request.path,
        exc.status,
        exc.code or exc.type,
        exc.message,
        ctx.request_id,
    )


def _presented(request: web.Request, what: str, basic: bool = False) -> str:
    """The key the request carries (bearer, Anthropic's ``x-api-key``, or Basic's password for a browser page);
    never logged."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if not header and (api_key := request.headers.get("x-api-key", "").strip()):
        # the Anthropic SDK sends its key here and no Authorization header
        return api_key
    if basic and scheme.lower() == "basic" and presented:
        try:
            # any user name; the password is the key
            return base64.b64decode(presented.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized(f"invalid {what}") from None
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized(f"missing {what}: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
    return presented.strip()


def _keys(app: web.Application) -> KeyTable:
    config = app.get(CONFIG)
    keys = config.keys if config is not None else None
    if keys is None:
        # an app assembled without build_app (a front tested alone): the settings' two keys
        settings = app[SETTINGS]
        keys = KeyTable.build({}, Path("."), settings.api_key, settings.admin_key)
    return keys


def _identify(request: web.Request, what: str, basic: bool = False) -> ClientKey:
    # the table compares digests in constant time against every key
    key = _keys(request.app).lookup(_presented(request, what, basic))
    if key is None:
        raise Unauthorized(f"invalid {what}")
    context(request).use_key(key)
    return key


@web.middleware
async def api_key_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = _keys(request.app)
    if request.path.startswith("/admin"):
        if keys.has_admin_keys:
            if not _identify(request, "admin key").admin:
                raise Forbidden("the admin API needs an admin key; client keys are refused", code="admin_key_required")
        elif not is_loopback(request.remote or ""):
            raise Forbidden("the admin API answers only on loopback until an admin key is set (ZOE_ADMIN_KEY)")
        return await handler(request)
    if keys.has_client_keys and request.path not in PUBLIC_PATHS:
        browser = request.path.startswith(BROWSER_PATHS)
        try:
            _identify(request, "API key", basic=browser)
        except Unauthorized as exc:
            if not browser:
                raise
            # the browser asks for the key (any user name) and sends it with the page's own requests
            response = _render_error(request, exc)
            response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
            return response
    return await handler(request)


class Drain:
    """In-flight request count, and the switch that turns new requests away once shutdown begins."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """True when every in-flight request finished within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()


DRAIN = web.AppKey("drain", Drain)
# streams that never finish by themselves (the dashboard's live telemetry)
ENDLESS_PATHS = frozenset({"/api/telemetry/stream"})


@web.middleware
async def drain_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While shutting down, new requests get a 503 at once (a balancer or client retries elsewhere);
    the listening socket stays open so they hear why instead of a refused connection."""
    drain = request.app[DRAIN]
    if drain.draining:
        raise ServiceUnavailable("the daemon is shutting down; retry shortly", code="shutting_down", retry_after=5)
    if request.path in ENDLESS_PATHS:
        # nothing to wait for: the server's on_shutdown ends these streams
        return await handler(request)
    drain.enter()
    try:
        return await handler(request)
    finally:
        drain.leave()


# the methods and request headers a browser may use cross-origin; the admin API is never offered
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-Request-Id, X-Zoe-Deadline, X-Zoe-Priority, X-Api-Key, Anthropic-Version"


def _cors_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or origin not in request.app[SETTINGS].cors_origins or request.path.startswith("/admin"):
        return None
    return origin


@web.middleware
async def cors_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a browser's preflight for a configured origin (none by default: CORS stays off).

    Outside auth, since a preflight carries no credentials; the admin API stays same-origin whatever the
    setting. A small middleware rather than aiohttp-cors: that library wants every route registered with it,
    and the policy here is one list of origins for every non-admin path.
    """
    origin = _cors_origin(request)
    if origin is None or request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Max-Age": "600",
        },
    )


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: also reaches streamed responses and errors rendered outside the handler."""
    origin = _cors_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = (
            "X-Request-Id, X-Zoe-Route, X-Zoe-Served-By, X-Zoe-Priority, Retry-After"
        )
        response.headers["Vary"] = "Origin"
