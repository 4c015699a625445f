"""The HTTP side port (``MFA_METRICS_ADDR``): metrics, liveness, readiness and the JWKS.

aiohttp's server on the service's own event loop, GET and HEAD only (405 otherwise),
404 for any other path:

- ``/metrics``: the application's registry, in the format the scraper asks for
  (Prometheus text, or OpenMetrics), as prometheus-client's own server answered;
- ``/healthz``: 200 while the process runs (liveness);
- ``/readyz``: 200 when the service may take calls: started, not shutting down, and the
  database answered ``SELECT 1`` within ``READY_TIMEOUT_SECONDS``; 503 otherwise;
- ``/.well-known/jwks.json``: exactly what ``GetJwks`` returns (RFC 7517 key set), with
  an ETag (a request whose If-None-Match names it gets 304) and ``Cache-Control:
  max-age`` of ``JWKS_MAX_AGE_SECONDS``.

The socket is bound before the service migrates (``open``), and answers at once: alive,
not ready (``starting``) until ``serve`` hands it the database and the keys, which the
composition root does once the gRPC server is up. A liveness probe thus never kills a
replica that is migrating.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from mfa_service.errors import DatabaseUnavailable
from mfa_service.services.keys import REFRESH_INTERVAL

# A probe's answer must come before the prober gives up (Kubernetes waits 1 s by
# default: give the probe timeoutSeconds: 2). A database that takes longer for SELECT 1
# is not one to send calls to.
READY_TIMEOUT_SECONDS = 1.0
# A new signing key signs as soon as it exists (``mfa-service keys rotate``), so a cached
# key set lacks it until it is fetched again. A replica itself may publish and sign with
# keys up to REFRESH_INTERVAL old when it missed a notification; a cache as old adds as
# much. Retired keys stay published until their tokens expired, so a longer cache never
# trusts a key it should not; verifiers fetch again on an unknown kid.
JWKS_MAX_AGE_SECONDS = int(REFRESH_INTERVAL.total_seconds())
JWKS_CONTENT_TYPE = "application/jwk-set+json"  # RFC 7517 §8.5
NO_STORE = {"Cache-Control": "no-store"}


class SidePort:
    """The side port's server; ``open`` binds and starts it, ``close`` ends it."""

    def __init__(self, runner: web.AppRunner, registry: CollectorRegistry) -> None:
        self._runner = runner
        self._registry = registry
        self._database_ready: Callable[[], Awaitable[bool]] | None = None
        self._jwks: Callable[[], Awaitable[str]] | None = None
        self._stopping = False
        self._probe: asyncio.Future[bool] | None = None
        self.port = 0

    @classmethod
    async def open(cls, sockets: list[socket.socket], registry: CollectorRegistry) -> SidePort:
        """Serve on ``sockets`` (bound by ``listening.bind``): from now on /healthz is 200,
        /readyz 503 until ``serve``."""
        app = web.Application()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        side = cls(runner, registry)
        app.router.add_get("/metrics", side._metrics)
        app.router.add_get("/healthz", side._healthz)
        app.router.add_get("/readyz", side._readyz)
        app.router.add_get("/.well-known/jwks.json", side._jwks_json)
        app.on_response_prepare.append(_server_header)
        await runner.setup()
        try:
            for sock in sockets:
                await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            for sock in sockets:
                sock.close()
            raise
        side.port = int(sockets[0].getsockname()[1])
        return side

    def serve(
        self,
        *,
        database_ready: Callable[[], Awaitable[bool]],
        jwks: Callable[[], Awaitable[str]],
    ) -> None:
        """The service is up: /readyz asks ``database_ready``, the JWKS is ``jwks``."""
        self._database_ready = database_ready
        self._jwks = jwks

    def stopping(self) -> None:
        """Shutting down: /readyz is 503 from now on (the rest answers until ``close``)."""
        self._stopping = True

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self._registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers=NO_STORE)

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._stopping:
            return _unavailable("shutting down")
        if self._database_ready is None:
            return _unavailable("starting")
        if not await self._ready(self._database_ready):
            return _unavailable("database unreachable")
        return web.Response(text="ready\n", headers=NO_STORE)

    async def _ready(self, database_ready: Callable[[], Awaitable[bool]]) -> bool:
        """One database probe at a time: requests arriving while it runs share it."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(_within(READY_TIMEOUT_SECONDS, database_ready))
        return await asyncio.shield(self._probe)

    async def _jwks_json(self, request: web.Request) -> web.Response:
        if self._jwks is None:
            return _unavailable("starting")
        try:
            body = (await self._jwks()).encode()
        except DatabaseUnavailable:  # keys to reload, and no database to read them from
            return _unavailable("database unreachable")
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {"ETag": etag, "Cache-Control": f"max-age={JWKS_MAX_AGE_SECONDS}"}
        if _matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=JWKS_CONTENT_TYPE, headers=headers)


async def _within(seconds: float, check: Callable[[], Awaitable[bool]]) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return await check()
    except TimeoutError:
        return False


def _unavailable(why: str) -> web.Response:
    return web.Response(status=503, text=f"{why}\n", headers=NO_STORE)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: ``*``, or any listed tag equal by weak comparison."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "mfa-service"  # not aiohttp's and Python's versions
