"""Approvals (DESIGN §3d): what the user approves with a factor, and its hash.

An approval names the actions, the exact payload (its SHA-256) and the words the user is
shown. Bound to a challenge, it is encoded canonically together with the environment,
the user, the challenge id and its expiry (RFC 8785 JSON, ``docs/approvals.md``), and
``approval_hash`` is the SHA-256 of that encoding: for a passkey it is the WebAuthn
challenge, so the authenticator signs what the user approved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import rfc8785

from mfa_service.domain.model import ALWAYS_PROTECTED_ACTIONS, Action, EnvironmentId, UserId
from mfa_service.errors import InvalidArgument

TYPE = "mfa.v1.approval"
VERSION = 1
MAX_DISPLAY_TEXT = 256
DIGEST_BYTES = 32


@dataclass(frozen=True, slots=True)
class Approval:
    """What the user approves: ``actions`` sorted and distinct, ``session_id`` None when
    the token may be used in any session."""

    actions: tuple[Action, ...]
    payload_digest: bytes
    display_text: str
    single_use: bool
    session_id: str | None = None


def approval(
    actions: tuple[Action, ...],
    payload_digest: bytes,
    display_text: str,
    *,
    single_use: bool,
    session_id: str | None,
    field: str = "approval",
) -> Approval:
    """An approval from checked parts; what a caller may get wrong is refused here,
    naming the field (``approval.display_text``)."""
    if not actions:
        raise InvalidArgument.field(f"{field}.actions", "at least one action is required")
    if len(set(actions)) != len(actions):
        raise InvalidArgument.field(f"{field}.actions", "must not list an action twice")
    if not single_use and any(a in ALWAYS_PROTECTED_ACTIONS for a in actions):
        raise InvalidArgument.field(
            f"{field}.single_use", "an approval of a credential change is single use"
        )
    if len(payload_digest) != DIGEST_BYTES:
        raise InvalidArgument.field(
            f"{field}.payload_digest", "required: the SHA-256 of the payload (32 bytes)"
        )
    if not display_text:
        raise InvalidArgument.field(f"{field}.display_text", "required")
    if len(display_text) > MAX_DISPLAY_TEXT:
        raise InvalidArgument.field(
            f"{field}.display_text", f"at most {MAX_DISPLAY_TEXT} characters"
        )
    if not display_text.isprintable():
        raise InvalidArgument.field(f"{field}.display_text", "must not contain control characters")
    return Approval(
        actions=tuple(sorted(actions, key=lambda a: a.name)),
        payload_digest=payload_digest,
        display_text=display_text,
        single_use=single_use,
        session_id=session_id,
    )


@dataclass(frozen=True, slots=True)
class Bound:
    """An approval bound to a challenge: its canonical encoding and hash."""

    approval: Approval
    encoded: str  # the RFC 8785 JSON the hash is taken of
    hash: bytes


def _document(
    approval: Approval,
    *,
    environment_id: EnvironmentId,
    user_id: UserId,
    challenge_id: UUID,
    expires_at: datetime,
) -> dict[str, Any]:
    if expires_at.microsecond:
        raise ValueError("a bound challenge expires at a whole second")
    return {
        "type": TYPE,
        "version": VERSION,
        "environment_id": environment_id,
        "user_id": user_id,
        "challenge_id": str(challenge_id),
        "expires_at": int(expires_at.timestamp()),
        "actions": [f"ACTION_{a.name}" for a in approval.actions],
        "payload_digest": approval.payload_digest.hex(),
        "display_text": approval.display_text,
        "single_use": approval.single_use,
        "session_id": approval.session_id or "",
    }


def bind(
    approval: Approval,
    *,
    environment_id: EnvironmentId,
    user_id: UserId,
    challenge_id: UUID,
    expires_at: datetime,
) -> Bound:
    """``approval`` bound to this challenge (``docs/approvals.md``, version 1)."""
    document = _document(
        approval,
        environment_id=environment_id,
        user_id=user_id,
        challenge_id=challenge_id,
        expires_at=expires_at,
    )
    encoded = rfc8785.dumps(document)
    return Bound(approval, encoded.decode(), hashlib.sha256(encoded).digest())


def from_encoded(encoded: str) -> Approval:
    """The approval a stored encoding holds (the store keeps the exact bytes hashed)."""
    document = json.loads(encoded)
    if document.get("type") != TYPE or document.get("version") != VERSION:
        raise ValueError("not a version 1 approval")
    return Approval(
        actions=tuple(Action[a.removeprefix("ACTION_")] for a in document["actions"]),
        payload_digest=bytes.fromhex(document["payload_digest"]),
        display_text=document["display_text"],
        single_use=bool(document["single_use"]),
        session_id=document["session_id"] or None,
    )


def fit(
    approved: Approval,
    *,
    actions: tuple[Action, ...],
    payload_digest: bytes | None,
    single_use: bool,
    session_id: str | None,
) -> Approval | None:
    """What a token minted on a bound challenge covers: exactly the approval, when the
    request asks for its terms or leaves them empty (no actions, no digest, single use
    not asked for, no session); None when the request asks for anything else."""
    if actions and set(actions) != set(approved.actions):
        return None
    if payload_digest is not None and payload_digest != approved.payload_digest:
        return None
    if single_use and not approved.single_use:
        return None
    if session_id is not None and session_id != approved.session_id:
        return None
    return approved


def whole_second(at: datetime) -> datetime:
    """``at`` without its fraction: a bound challenge's expiry (the encoding's)."""
    return at.replace(microsecond=0).astimezone(UTC)
