"""Page tokens (AIP-158: opaque to callers): ``v1:`` and a position, in unpadded URL-safe
base64. ListAuditEvents' positions are event row ids, ListEnvironments' environment ids,
WatchAuditEvents' cursors ``<xid>.<row id>``."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TypeVar

from mfa_service.errors import InvalidArgument

_Position = TypeVar("_Position")


def encode(position: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode().rstrip("=")


def decode(
    token: str,
    parse: Callable[[str], _Position],
    *,
    field: str = "page_token",
    description: str = "not a token from a previous page",
) -> _Position:
    """The position of a token ``encode`` made, as ``parse`` reads it (raising
    ``ValueError`` for a position it does not accept); any other token is refused as the
    request's ``field``."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, _, position = text.partition(":")
        if version != "v1":
            raise ValueError(token)
        return parse(position)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.field(field, description) from None
