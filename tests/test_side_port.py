"""The HTTP side port (``MFA_METRICS_ADDR``, mfa_service.api.side_port) of a real server:
the JWKS document is GetJwks' with its caching headers, /readyz follows the database
(taken down as tests/test_outage.py does), every other path is 404."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_outage import Postgres

from flows import call
from helpers import TEST_KEY_RING, FakeClock, create_database, eventually, refused, started_app
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa_client import Client
from mfa_service import app as app_module
from mfa_service import listening
from mfa_service.api.side_port import JWKS_MAX_AGE_SECONDS, READY_TIMEOUT_SECONDS, SidePort
from mfa_service.app import rotate_signing_key
from mfa_service.services.keys import REFRESH_INTERVAL

JWKS = "/.well-known/jwks.json"


@pytest.fixture
async def served(database_url: str, clock: FakeClock) -> AsyncIterator[app_module.Application]:
    async with started_app(database_url, clock, metrics_addr="127.0.0.1:0") as application:
        yield application


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def url(application: app_module.Application, path: str) -> str:
    return f"http://127.0.0.1:{application.metrics_port}{path}"


async def get_jwks(application: app_module.Application) -> str:
    async with Client.connect(f"127.0.0.1:{application.port}", insecure=True) as client:
        response = await client.action_tokens_stub.GetJwks(at_pb.GetJwksRequest())
    return str(response.jwks_json)


async def test_the_jwks_document_is_get_jwks_with_caching_headers(
    served: app_module.Application,
    http: aiohttp.ClientSession,
    database_url: str,
    clock: FakeClock,
) -> None:
    async with http.get(url(served, JWKS)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/jwk-set+json"
        assert response.headers["Cache-Control"] == f"max-age={JWKS_MAX_AGE_SECONDS}"
        body = await response.read()
        etag = response.headers["ETag"]
    assert body == (await get_jwks(served)).encode()
    # The cache lasts no longer than a replica's own copy of the keys may lag.
    assert JWKS_MAX_AGE_SECONDS == REFRESH_INTERVAL.total_seconds() == 60

    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        async with http.get(url(served, JWKS), headers={"If-None-Match": if_none_match}) as r:
            assert (r.status, await r.read()) == (304, b""), if_none_match
            assert r.headers["ETag"] == etag
            assert r.headers["Cache-Control"] == f"max-age={JWKS_MAX_AGE_SECONDS}"
    async with http.get(url(served, JWKS), headers={"If-None-Match": '"other"'}) as response:
        assert (response.status, await response.read()) == (200, body)
    async with http.head(url(served, JWKS)) as response:
        assert (response.status, await response.read()) == (200, b"")
        assert response.headers["Content-Length"] == str(len(body))
        assert response.headers["ETag"] == etag

    # A rotation publishes a new key: another document, another tag, a 200 for the old one.
    await rotate_signing_key(
        database_url=database_url, key_ring=TEST_KEY_RING, algorithm="ES256", clock=clock
    )

    async def rotated() -> str:
        jwks = await get_jwks(served)
        return jwks if jwks.encode() != body else ""

    new_jwks = await eventually(rotated, what="the rotated key in GetJwks")
    async with http.get(url(served, JWKS), headers={"If-None-Match": etag}) as response:
        assert response.status == 200
        assert await response.read() == new_jwks.encode()
        assert response.headers["ETag"] != etag


async def test_only_the_four_paths_answer_and_only_to_get_and_head(
    served: app_module.Application, http: aiohttp.ClientSession
) -> None:
    for path in ("/nope", "/", "/metrics/", "/healthz/x", "/.well-known/", "/jwks.json"):
        async with http.get(url(served, path)) as response:
            assert response.status == 404, path
    async with http.get(url(served, "/healthz")) as response:
        assert (response.status, await response.text()) == (200, "ok\n")
    async with http.get(url(served, "/readyz")) as response:
        assert (response.status, await response.text()) == (200, "ready\n")
        assert response.headers["Cache-Control"] == "no-store"
    async with http.get(url(served, "/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        names = {family.name for family in text_string_to_metric_families(await response.text())}
    assert "mfa_db_pool_max_size" in names
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        for path in ("/metrics", "/readyz", JWKS):
            async with http.request(method, url(served, path)) as response:
                assert response.status == 405, (method, path)
                assert response.headers["Allow"] == "GET,HEAD"
    async with http.get(url(served, "/healthz")) as response:
        assert response.headers["Server"] == "mfa-service"  # no software versions


async def test_alive_at_once_ready_only_once_serving_and_not_while_stopping() -> None:
    """The side port answers from the moment it is bound (before migrations): alive,
    not ready; ``stopping`` makes it unready while the calls in flight finish."""
    sockets = listening.bind("MFA_METRICS_ADDR", "127.0.0.1", 0)
    side = await SidePort.open(sockets, CollectorRegistry())
    base = f"http://127.0.0.1:{side.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            for path in ("/readyz", JWKS):
                async with http.get(f"{base}{path}") as response:
                    assert (response.status, await response.text()) == (503, "starting\n")

            async def ready() -> bool:
                return True

            async def jwks() -> str:
                return '{"keys": []}'

            side.serve(database_ready=ready, jwks=jwks)
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
            side.stopping()
            async with http.get(f"{base}/readyz") as response:
                assert (response.status, await response.text()) == (503, "shutting down\n")
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
    finally:
        await side.close()


# --- /readyz while the database is down ------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = Postgres(Path(tempfile.mkdtemp(prefix="mfa-side-port-pg-")))
    try:
        yield server
    finally:
        server.close()


async def timed_get(http: aiohttp.ClientSession, address: str) -> tuple[int, float]:
    started = time.monotonic()
    async with http.get(address) as response:
        await response.read()
        return response.status, time.monotonic() - started


@pytest.mark.parametrize("mode", ["stopped", "frozen"])
async def test_readyz_is_503_while_the_database_is_down_and_200_after(
    postgres: Postgres, clock: FakeClock, http: aiohttp.ClientSession, mode: str
) -> None:
    """Stopped (connections refused) or frozen (SIGSTOP: nothing answers): /readyz says
    503 within its timeout, never hangs, and 200 again once the database is back; the
    process stays alive. The JWKS stays what GetJwks answers: the keys held while the
    listening session lives (frozen), 503 when its loss made them stale (stopped), as
    GetJwks is then UNAVAILABLE."""
    database_url = await create_database(postgres.url)
    async with started_app(database_url, clock, metrics_addr="127.0.0.1:0") as served:
        readyz = url(served, "/readyz")
        assert (await timed_get(http, readyz))[0] == 200
        async with http.get(url(served, JWKS)) as response:
            jwks = await response.read()
        try:
            if mode == "stopped":
                await asyncio.to_thread(postgres.stop, "fast")
            else:
                postgres.freeze()

            async def unready() -> float:
                status, seconds = await timed_get(http, readyz)
                return seconds if status == 503 else 0.0

            seconds = await eventually(unready, within=15, what="/readyz 503")
            # The probe's bound, plus what a loaded machine adds to a request.
            assert seconds < READY_TIMEOUT_SECONDS + 1.5
            print(f"\n/readyz with the database {mode}: 503 in {seconds * 1000:.0f} ms")
            async with http.get(url(served, "/healthz")) as response:
                assert response.status == 200
            async with http.get(url(served, JWKS)) as response:
                if mode == "frozen":
                    assert (response.status, await response.read()) == (200, jwks)
                else:
                    assert (response.status, await response.text()) == (
                        503,
                        "database unreachable\n",
                    )
                    assert response.headers["Cache-Control"] == "no-store"
                    await refused(
                        call(get_jwks(served)),
                        grpc.StatusCode.UNAVAILABLE,
                        "ERROR_REASON_DATABASE_UNAVAILABLE",
                    )
        finally:
            if postgres.frozen:
                postgres.thaw()
            if not postgres.running:
                await asyncio.to_thread(postgres.start)

        async def ready() -> bool:
            return (await timed_get(http, readyz))[0] == 200

        await eventually(ready, within=15, what="/readyz 200 after the database came back")


def test_a_side_port_address_in_use_is_refused_naming_its_variable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(listening.PortUnavailable) as refused:
            listening.bind("MFA_METRICS_ADDR", "127.0.0.1", port)
    assert str(refused.value) == f"MFA_METRICS_ADDR: 127.0.0.1:{port} is already in use"
