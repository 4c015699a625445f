"""Page tokens (AIP-158: opaque to callers): ``v1:`` and a position, in unpadded URL-safe
base64. ListAuditEvents' positions are event row ids, ListEnvironments' environment ids,
WatchAuditEvents' cursors ``<xid>.<row id>``."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from mfa_service.errors import InvalidArgument


def encode(position: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode().rstrip("=")


def decode(
    token: str,
    valid: Callable[[str], bool],
    *,
    field: str = "page_token",
    description: str = "not a token from a previous page",
) -> str:
    """The position of a token ``encode`` made, if ``valid``; any other token is refused
    as the request's ``field``."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, _, position = text.partition(":")
        if version != "v1" or not valid(position):
            raise ValueError(token)
        return position
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.field(field, description) from None
