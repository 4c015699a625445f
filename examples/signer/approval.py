"""Checking a passkey approval offline (docs/approvals.md), before asking the service.

An action token from a passkey approval carries the approval (``apv``, ``approval``) and
the authenticator's assertion (``passkey_evidence``). With the message about to be signed
and the user's passkey public key (a COSE key: ``Device.passkey_public_key``), anyone can
check that the user's own authenticator signed *this* message and *these* words:

1. the approval hash recomputed from the claims and ``SHA-256(message)`` equals ``apv``;
2. ``client_data_json`` is a ``webauthn.get`` whose ``challenge`` is ``apv``;
3. ``signature`` verifies over ``authenticator_data || SHA-256(client_data_json)`` with
   the passkey's key, and the authenticator data says the user was present.

The check needs nothing from the service: its trust anchor is the passkey's key. Every
claim the passkey signed is recomputed, so an altered claim only makes it fail; what it
does not cover (``exp``, ``jti``, single use, the service's own signature) is
``ValidateActionToken``'s to decide, which the signer asks next.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from webauthn.helpers import (
    decode_credential_public_key,
    decoded_public_key_to_cryptography,
    parse_authenticator_data,
    parse_client_data_json,
    verify_signature,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import ClientDataType

from mfa.v1 import types_pb2
from mfa_client import approval_hash

TOKEN_ALGORITHMS = ("ES256", "EdDSA")  # what the service signs action tokens with


class ApprovalNotVerified(Exception):
    """The offline check failed; ``reason`` is one line saying which step."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"approval not verified: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedApproval:
    """What the user's passkey signed: the words they were shown, for the signer's log."""

    approval_hash: bytes
    display_text: str
    credential_id: bytes


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding; ``ValueError`` when it is not."""
    if not isinstance(text, str):
        raise ValueError("not a base64url string")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError("not base64url") from error


def token_claims(token: str, jwks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The claims of an action token: its payload decoded, and with ``jwks`` (the
    service's ``GetJwks``) its signature verified under the key its ``kid`` names,
    algorithm pinned. Without ``jwks`` nothing is verified here (see the module's
    docstring). ``exp`` and ``aud`` are left to ``ValidateActionToken``."""
    try:
        if jwks is None:
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
            return claims
        kid = jwt.get_unverified_header(token).get("kid")
        jwk = next((key for key in jwks.get("keys", ()) if key.get("kid") == kid), None)
        if jwk is None or jwk.get("alg") not in TOKEN_ALGORITHMS:
            raise ApprovalNotVerified("the token's key is not in the service's JWKS")
        verified: dict[str, Any] = jwt.decode(
            token,
            jwt.PyJWK(dict(jwk)).key,
            algorithms=[jwk["alg"]],
            options={"verify_exp": False, "verify_aud": False},
        )
        return verified
    except jwt.InvalidTokenError as error:
        raise ApprovalNotVerified(f"not a valid action token ({type(error).__name__})") from error


def _recomputed_hash(claims: Mapping[str, Any], message: bytes) -> tuple[bytes, str]:
    """Step 1's hash and the display text, from the claims and SHA-256(message)."""
    try:
        bound = claims["approval"]
        session_id = claims.get("sid", "")
        if not isinstance(session_id, str) or not isinstance(claims["su"], bool):
            raise TypeError("sid or su")
        approval = types_pb2.Approval(
            actions=[types_pb2.Action.Value(f"ACTION_{name}") for name in claims["act"]],
            payload_digest=hashlib.sha256(message).digest(),
            display_text=bound["display_text"],
            single_use=claims["su"],
            session_id=session_id,
        )
        recomputed = approval_hash(
            environment_id=claims["env"],
            user_id=claims["sub"],
            challenge_id=bound["challenge_id"],
            expires_at=bound["expires_at"],
            approval=approval,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ApprovalNotVerified(f"malformed approval claims ({error})") from error
    return recomputed, approval.display_text


def check_passkey_approval(
    claims: Mapping[str, Any], message: bytes, passkey_public_key: bytes
) -> VerifiedApproval:
    """Check offline that the user's passkey (``passkey_public_key``, COSE) approved
    ``message`` with the words in the claims (docs/approvals.md, "Checking a passkey
    approval offline"); ``ApprovalNotVerified`` with a one-line reason otherwise."""
    if "apv" not in claims:
        raise ApprovalNotVerified("the token carries no approval (apv)")
    evidence = claims.get("passkey_evidence")
    if not isinstance(evidence, Mapping):
        raise ApprovalNotVerified("the approval was not made with a passkey (no passkey_evidence)")
    try:
        apv = b64url_decode(claims["apv"])
        credential_id = b64url_decode(evidence["credential_id"])
        authenticator_data = b64url_decode(evidence["authenticator_data"])
        client_data_json = b64url_decode(evidence["client_data_json"])
        signature = b64url_decode(evidence["signature"])
    except (KeyError, ValueError) as error:
        raise ApprovalNotVerified(f"malformed passkey_evidence or apv ({error})") from error

    # 1. The approval the claims describe, for this message, is the one approved.
    recomputed, display_text = _recomputed_hash(claims, message)
    if not hmac.compare_digest(recomputed, apv):
        raise ApprovalNotVerified("apv is not the approval of this message and these claims")

    # 2. The authenticator was asked to sign exactly that hash.
    try:
        client_data = parse_client_data_json(client_data_json)
    except (WebAuthnException, ValueError, TypeError, AttributeError) as error:
        raise ApprovalNotVerified("client_data_json is not WebAuthn client data") from error
    if client_data.type != ClientDataType.WEBAUTHN_GET:
        raise ApprovalNotVerified(f"client_data_json is a {client_data.type!r}, not webauthn.get")
    if not hmac.compare_digest(client_data.challenge, apv):
        raise ApprovalNotVerified("client_data_json's challenge is not apv")

    # 3. The user's own authenticator signed it, with the user present.
    try:
        decoded = decode_credential_public_key(passkey_public_key)
        public_key = decoded_public_key_to_cryptography(decoded)
    except (WebAuthnException, ValueError, KeyError, TypeError, IndexError) as error:
        raise ApprovalNotVerified("the passkey public key is not a usable COSE key") from error
    try:
        verify_signature(
            public_key=public_key,
            signature_alg=decoded.alg,
            signature=signature,
            data=authenticator_data + hashlib.sha256(client_data_json).digest(),
        )
    except (InvalidSignature, WebAuthnException, ValueError, TypeError) as error:
        raise ApprovalNotVerified("the passkey's signature does not verify") from error
    try:
        flags = parse_authenticator_data(authenticator_data).flags
    except WebAuthnException as error:
        raise ApprovalNotVerified("authenticator_data is malformed") from error
    if not flags.up:
        raise ApprovalNotVerified("the authenticator did not see the user present (UP flag)")
    return VerifiedApproval(recomputed, display_text, credential_id)


def check_token_approval(
    token: str,
    message: bytes,
    passkey_public_key: bytes,
    *,
    jwks: Mapping[str, Any] | None = None,
) -> VerifiedApproval:
    """:func:`check_passkey_approval` on an action token's claims (:func:`token_claims`)."""
    return check_passkey_approval(token_claims(token, jwks), message, passkey_public_key)
