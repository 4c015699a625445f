"""The listening ports, taken before anything is written.

``serve`` checks its ports before it migrates or makes a key, and ``app.start`` binds
them before it does: a port another process holds stops start-up with one line naming
its variable (``PortUnavailable``), never after the database was changed.
"""

from __future__ import annotations

import errno
import os
import socket

from mfa_service.config import ConfigError


class PortUnavailable(ConfigError):
    """The address of ``variable`` cannot be listened on (in use, not local, refused)."""


def bind(variable: str, host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, as asyncio's
    ``create_server`` makes them (SO_REUSEADDR, IPv6 sockets IPv6 only); port 0: one
    port the system picks, the same on every address."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortUnavailable(variable, f"cannot listen on {where}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(addresses):
            if sockets and port == 0:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sockets.append(socket.create_server(address, family=family))
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    continue  # no IPv6 here (localhost gives ::1 too): as asyncio does
                raise PortUnavailable(variable, _problem(where, exc)) from None
        if not sockets:
            raise PortUnavailable(variable, f"cannot listen on {where}: no usable address")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def check(variable: str, host: str, port: int) -> None:
    """Raise ``PortUnavailable`` unless ``host:port`` could be listened on now. Port 0
    always can."""
    if port != 0:
        for sock in bind(variable, host, port):
            sock.close()


def _problem(where: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use"
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return f"cannot listen on {where}: {reason}"
