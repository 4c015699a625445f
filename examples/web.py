"""What both example apps (the user's screens, the dashboard) do the same way on the web:
security headers with a strict Content-Security-Policy, CSRF protection on every
state-changing request, JSON bodies, errors as JSON the page can show next to a field,
and serving on a free port.

The pages load only their own scripts and styles (``'self'``: no inline script or
style, no CDN); images may also be ``data:`` URIs (the QR code of an authenticator app).

CSRF: a state-changing request (anything but GET, HEAD, OPTIONS) must come from the
app's own origin (``Origin`` equal to the request's own, ``Sec-Fetch-Site`` absent or
``same-origin``) and carry the ``X-CSRF-Token`` header equal to the ``csrf`` cookie
(double submit). The cookie is set on the first response that finds none: SameSite
Strict, so another site's request never carries it, and readable by the page's script,
which copies it into the header (``static/common.js``: ``api.post``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import timestamp_pb2

from mfa_client import MfaServiceError

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSRF_COOKIE = "csrf"
CSRF_HEADER = "X-CSRF-Token"
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
# base.css and common.js, served by each app at /shared/ (``add_shared_static``).
SHARED_STATIC = Path(__file__).parent / "static"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# gRPC status -> HTTP status for the page. Anything else (e.g. UNAUTHENTICATED, which is
# about the backend's own credentials, not the user) is the backend's fault: 502.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,  # ERROR_REASON_VERIFICATION_FAILED, step-up
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,  # locked out
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class BadRequest(Exception):
    """The page sent something this backend refuses: 400, naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def error_response(
    status: int, code: str, reason: str, message: str, fields: dict[str, str] | None = None
) -> web.Response:
    """``{"error": {"status", "reason", "message", "fields"}}``: ``fields`` maps a field's
    path (as mfa-service names it, e.g. ``settings.passkey.allowed_origins``) to what is
    wrong with it, for the page to show beside that field."""
    return web.json_response(
        {
            "error": {
                "status": code,
                "reason": reason,
                "message": message,
                "fields": fields or {},
            }
        },
        status=status,
    )


def service_error_response(error: MfaServiceError) -> web.Response:
    """An mfa-service refusal as the page sees it; a lockout carries ``Retry-After``."""
    response = error_response(
        HTTP_STATUS.get(error.code, 502),
        error.code.name,
        error.reason,
        error.message,
        {violation.field: violation.description for violation in error.field_violations},
    )
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(int(error.retry_after.total_seconds()) + 1)
    return response


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CSRF checks before the handler; security headers and the CSRF cookie after it."""
    if request.method not in _SAFE_METHODS:
        refused = _csrf_refusal(request)
        if refused:
            return _secured(request, error_response(403, "PERMISSION_DENIED", "CSRF", refused))
    try:
        response = await handler(request)
    except web.HTTPException as error:  # 404, 405...: still with the headers
        _secured(request, error)
        raise
    return _secured(request, response)


def _csrf_refusal(request: web.Request) -> str:
    """Why a state-changing request is refused as cross-site; ``""`` when it is not."""
    origin = request.headers.get("Origin")
    if origin != f"{request.scheme}://{request.host}":
        return "the request does not come from this site (Origin)"
    if request.headers.get("Sec-Fetch-Site", "same-origin") != "same-origin":
        return "the request does not come from this site (Sec-Fetch-Site)"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), header.encode()):
        return f"the {CSRF_HEADER} header does not match the {CSRF_COOKIE} cookie"
    return ""


def _secured(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    headers = response.headers
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cache-Control"] = "no-store"  # recovery codes, secrets: never cached
    if CSRF_COOKIE not in request.cookies:
        response.set_cookie(
            CSRF_COOKIE, secrets.token_urlsafe(32), path="/", samesite="Strict", httponly=False
        )
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``BadRequest`` and mfa-service's refusals as JSON errors for the page."""
    try:
        return await handler(request)
    except BadRequest as error:
        return error_response(400, "INVALID_ARGUMENT", "", str(error), {error.field: error.message})
    except MfaServiceError as error:
        return service_error_response(error)


async def body(request: web.Request) -> Json:
    """The request's JSON object (``Content-Type: application/json`` only)."""
    if request.content_type != "application/json":
        raise BadRequest("body", "expected Content-Type: application/json")
    try:
        parsed = await request.json()
    except ValueError:
        raise BadRequest("body", "not JSON") from None
    if not isinstance(parsed, dict):
        raise BadRequest("body", "must be a JSON object")
    return parsed


def text(values: Json, name: str, *, max_length: int = 256) -> str:
    """The non-empty string ``values[name]``, at most ``max_length`` characters."""
    value = values.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(name, "a non-empty string is required")
    if len(value) > max_length:
        raise BadRequest(name, f"at most {max_length} characters")
    return value


def credential(values: Json) -> str:
    """The browser's ``PublicKeyCredential.toJSON()``, passed on to mfa-service as is."""
    value = values.get("credential")
    if not isinstance(value, dict):
        raise BadRequest("credential", "the PublicKeyCredential's toJSON() is required")
    return json.dumps(value)


def add_shared_static(app: web.Application) -> None:
    """Serve ``examples/static`` (``base.css``, ``common.js``) at ``/shared/``."""
    app.router.add_static("/shared/", SHARED_STATIC, follow_symlinks=False)


def timestamp_json(timestamp: timestamp_pb2.Timestamp) -> str | None:
    """A protobuf time as the pages read it (RFC 3339); None for an unset one."""
    return timestamp.ToJsonString() if timestamp.seconds or timestamp.nanos else None


@dataclass
class RunningServer:
    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, *, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Start serving ``app``; ``port`` 0 picks a free one (see ``RunningServer.port``)."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return RunningServer(runner, int(runner.addresses[0][1]))


async def until_stopped() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()


def run(serving: Callable[[], Coroutine[Any, Any, None]], service_address: str) -> int:
    """An example app's ``main``: run ``serving`` (which serves until ``until_stopped``);
    exit status 1 with one line when mfa-service at ``service_address`` refuses or cannot
    be reached."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serving())
    except MfaServiceError as error:  # e.g. mfa-service is not running
        print(f"mfa-service at {service_address}: {error}", file=sys.stderr)
        return 1
    return 0
