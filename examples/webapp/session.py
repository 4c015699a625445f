"""The demo sign-in: who the user is and which login session this is, in a signed cookie.

There is no password here: typing a user name signs in as that user. What a real
backend keeps is the rest: every API call takes the user and the session from the
cookie, never from the request body, and the cookie is HttpOnly (the page's script
cannot read it), SameSite=Strict (another site's request never carries it) and signed
with HMAC-SHA256 under a key made at start (a cookie changed by one byte, or made
before a restart, signs in nobody). Each sign-in gets a fresh session id, so session
MFA is asked again at every sign-in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

COOKIE = "demo_session"
KEY_BYTES = 32
# A user name of the demo sign-in: what the user types, kept short and plain.
USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class SignedIn:
    user_id: str
    session_id: str


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def sign_in(key: bytes, user_id: str) -> tuple[SignedIn, str]:
    """A fresh login session for ``user_id`` and the cookie value that carries it."""
    who = SignedIn(user_id, secrets.token_urlsafe(16))
    payload = base64.urlsafe_b64encode(
        json.dumps({"u": who.user_id, "s": who.session_id}, separators=(",", ":")).encode()
    ).decode()
    return who, f"{payload}.{_mac(key, payload)}"


def signed_in(key: bytes, cookie: str | None) -> SignedIn | None:
    """Who the cookie signs in, or ``None`` (no cookie, a bad MAC, a malformed value)."""
    if not cookie or cookie.count(".") != 1:
        return None
    payload, mac = cookie.split(".")
    if not hmac.compare_digest(mac.encode(), _mac(key, payload).encode()):
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(values, dict):
        return None
    user, session = values.get("u"), values.get("s")
    if not isinstance(user, str) or not isinstance(session, str):
        return None
    return SignedIn(user, session)


def _mac(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
