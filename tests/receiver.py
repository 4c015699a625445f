"""A real webhook receiver for the tests: an aiohttp server on a loopback port that
answers each POST as the test says (a status, a redirect, or no answer until released)
and keeps every request it got."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _user_of(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["data"]["user_id"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: no answer, held)

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def user_id(self) -> str:
        return str(self.payload["data"]["user_id"])


class Receiver:
    """Not listening until ``start`` (a webhook's POSTs are refused meanwhile).

    ``status``: the answer to every POST (a 3xx carries ``Location: /elsewhere``).
    ``hold``: POSTs are kept waiting, unanswered, until ``hold`` is cleared.
    ``failing_users``: the POSTs of events of these users are answered 500 instead.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.failing_users: set[str] = set()
        self.hold = False
        self._released = asyncio.Event()
        self.received: list[Received] = []
        self.held: list[Received] = []
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def release(self) -> None:
        """Answer from now on, and let held requests end (their callers may be gone)."""
        self.hold = False
        self._released.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if self.hold:
            self.held.append(Received(request.path, headers, body, 0))
            await self._released.wait()
            return web.Response(status=503)
        status = self.status
        if self.failing_users and _user_of(body) in self.failing_users:
            status = 500
        self.received.append(Received(request.path, headers, body, status))
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status)

    def delivered(self, path: str = "/hook") -> list[Received]:
        """The POSTs to ``path`` answered with a 2xx, in the order they came."""
        return [r for r in self.received if r.path == path and 200 <= r.status < 300]

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
