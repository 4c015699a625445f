"""``approval_hash``: what a passkey signs for an approval (docs/approvals.md, version 1).

Written from the document, not from the service's code, so that the tests can hold the
two (and the TypeScript client's ``approvalHash``) to each other.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import rfc8785
from google.protobuf.timestamp_pb2 import Timestamp

from mfa.v1 import types_pb2

TYPE = "mfa.v1.approval"
VERSION = 1
DIGEST_BYTES = 32


def _seconds(expires_at: Timestamp | int) -> int:
    if isinstance(expires_at, Timestamp):
        if expires_at.nanos:
            raise ValueError("expires_at: a bound challenge expires at a whole second")
        return int(expires_at.seconds)
    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise TypeError("expires_at: a google.protobuf.Timestamp or whole seconds (int)")
    return expires_at


def _challenge_id(challenge_id: str | uuid.UUID) -> str:
    if isinstance(challenge_id, uuid.UUID):
        return str(challenge_id)
    try:
        canonical = str(uuid.UUID(challenge_id))
    except ValueError:
        canonical = ""
    if canonical != challenge_id:
        raise ValueError(
            "challenge_id: the lowercase UUID text ChallengeResponse.challenge_id holds"
        )
    return canonical


def _actions(actions: Any) -> list[str]:
    names = [types_pb2.Action.Name(action) for action in actions]  # ValueError if unknown
    if not names:
        raise ValueError("approval.actions: at least one action is required")
    if len(set(names)) != len(names):
        raise ValueError("approval.actions: must not list an action twice")
    if types_pb2.Action.Name(types_pb2.ACTION_UNSPECIFIED) in names:
        raise ValueError("approval.actions: ACTION_UNSPECIFIED is not an action")
    return sorted(names)


def approval_hash(
    *,
    environment_id: str,
    user_id: str,
    challenge_id: str | uuid.UUID,
    expires_at: Timestamp | int,
    approval: types_pb2.Approval,
) -> bytes:
    """The 32-byte ``approval_hash`` of ``approval`` bound to one challenge.

    ``environment_id`` and ``user_id`` are those given to ``Challenge``; ``challenge_id``
    and ``expires_at`` come from its ``ChallengeResponse`` (``expires_at`` as the
    ``Timestamp`` or its whole seconds). The result equals
    ``ChallengeResponse.approval_hash``, and is the WebAuthn challenge a passkey signs:

        response = await client.mfa_stub.Challenge(request)  # request.approval = approval
        expected = approval_hash(
            environment_id=request.environment_id,
            user_id=request.user_id,
            challenge_id=response.challenge_id,
            expires_at=response.expires_at,
            approval=request.approval,
        )
        assert expected == response.approval_hash

    It is SHA-256 over the RFC 8785 canonical JSON of docs/approvals.md, version 1:
    actions by enum name, sorted; the digest in lowercase hex; ``session_id`` ``""`` when
    none. Raises ``ValueError`` for what the service would refuse to bind: no action or
    one twice, a digest that is not 32 bytes, an expiry with a fraction of a second, a
    challenge id that is not the lowercase UUID text the service returns.
    """
    if len(approval.payload_digest) != DIGEST_BYTES:
        raise ValueError("approval.payload_digest: the SHA-256 of the payload (32 bytes)")
    document: dict[str, Any] = {
        "type": TYPE,
        "version": VERSION,
        "environment_id": environment_id,
        "user_id": user_id,
        "challenge_id": _challenge_id(challenge_id),
        "expires_at": _seconds(expires_at),
        "actions": _actions(approval.actions),
        "payload_digest": approval.payload_digest.hex(),
        "display_text": approval.display_text,
        "single_use": approval.single_use,
        "session_id": approval.session_id,
    }
    return hashlib.sha256(rfc8785.dumps(document)).digest()
