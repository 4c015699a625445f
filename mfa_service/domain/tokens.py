"""Action tokens: asymmetric JWTs proving a user passed MFA for specific actions.

The service signs them (ES256 or EdDSA, ``kid``, ``typ`` ``mfa-action+jwt``, exact
``iss``/``aud``) so other services can check them offline with the JWKS. Online, the
service accepts only the exact tokens it recorded at issue (their SHA-256), and single
use is decided in PostgreSQL, never here.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mfa_service.domain.model import Action, EnvironmentId, Method, UserId

TOKEN_TYPE = "mfa-action+jwt"
# RFC 8417 §2.3: a Security Event Token says what it is, so it is never taken for another
# JWT of the same keys (an action token's ``typ`` differs: ``peek`` refuses a SET).
SET_TYPE = "secevent+jwt"
ALGORITHMS = ("ES256", "EdDSA")
# RFC 8176 authentication method references for the factor that was passed.
AMR = {Method.TOTP: "otp", Method.PASSKEY: "hwk", Method.RECOVERY_CODE: "rcode"}

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: PrivateKey | None  # None for keys kept only to verify
    public_key: PublicKey
    created_at: datetime
    retired_at: datetime | None = None

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(
            jwt.get_algorithm_by_name(self.algorithm).to_jwk(self.public_key)
        )
        jwk.update({"kid": self.kid, "alg": self.algorithm, "use": "sig"})
        return jwk


@dataclass(frozen=True, slots=True)
class SealedSigningKey:
    """A signing key as stored: its private part (PKCS#8 DER) sealed by the key ring."""

    kid: str
    algorithm: str
    sealed_private_key: bytes
    created_at: datetime
    retired_at: datetime | None


def generate_key(algorithm: str, *, now: datetime) -> SigningKey:
    private: PrivateKey
    if algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported token algorithm {algorithm!r}")
    kid = f"{now:%Y%m%d}-{uuid.uuid4().hex[:8]}"
    return SigningKey(kid, algorithm, private, private.public_key(), created_at=now)


def private_key_bytes(key: SigningKey) -> bytes:
    if key.private_key is None:
        raise ValueError("no private key")
    return key.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(der: bytes) -> PrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError("not an ES256 or EdDSA key")
    return key


@dataclass(frozen=True, slots=True)
class ApprovalClaims:
    """What a token minted on a bound challenge carries of its approval (DESIGN §3d):
    with the token's other claims, all that recomputes ``hash``; for a passkey, the
    assertion that signed it."""

    hash: bytes
    challenge_id: uuid.UUID
    expires_at: datetime
    display_text: str
    passkey_evidence: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ActionClaims:
    jti: uuid.UUID
    environment_id: EnvironmentId
    user_id: UserId
    actions: tuple[Action, ...]
    single_use: bool
    issued_at: datetime
    expires_at: datetime
    method: Method
    payload_digest: bytes | None = None
    session_id: str | None = None
    approval: ApprovalClaims | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: ActionClaims, key: SigningKey, *, issuer: str, audience: str) -> str:
    if key.private_key is None:
        raise ValueError(f"key {key.kid} cannot sign")
    payload: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": claims.user_id,
        "env": claims.environment_id,
        "act": [a.name for a in claims.actions],
        "su": claims.single_use,
        "jti": str(claims.jti),
        "iat": int(claims.issued_at.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
        "amr": [AMR[claims.method]],
    }
    if claims.payload_digest is not None:
        payload["pd"] = _b64(claims.payload_digest)
    if claims.session_id is not None:
        payload["sid"] = claims.session_id
    if (approval := claims.approval) is not None:
        payload["apv"] = _b64(approval.hash)
        payload["approval"] = {
            "challenge_id": str(approval.challenge_id),
            "expires_at": int(approval.expires_at.timestamp()),
            "display_text": approval.display_text,
        }
        if approval.passkey_evidence is not None:
            payload["passkey_evidence"] = dict(approval.passkey_evidence)
    return jwt.encode(
        payload,
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.kid, "typ": TOKEN_TYPE},
    )


def encode_security_event(claims: Mapping[str, Any], key: SigningKey) -> str:
    """A Security Event Token (RFC 8417) of ``claims`` (e.g. ``events.caep_set_claims``)
    signed with ``key``, the current token key: receivers verify it with the JWKS."""
    if key.private_key is None:
        raise ValueError(f"key {key.kid} cannot sign")
    return jwt.encode(
        dict(claims),
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.kid, "typ": SET_TYPE},
    )


def token_hash(token: str) -> bytes:
    """What identifies an issued token online: the SHA-256 of its exact text."""
    return hashlib.sha256(token.encode()).digest()


def peek(token: str, *, algorithms: Collection[str]) -> uuid.UUID | None:
    """The ``jti`` of something shaped like one of our tokens, else None (no crypto).

    Cheap structural checks before the database: three base64url parts, an algorithm of
    ``algorithms`` (those of the keys that may verify: never ``none`` or HS*, whatever
    is passed) and our explicit ``typ`` (RFC 8725 §3.1, §3.11). Whether the token is
    genuine is decided by matching its SHA-256 against the one recorded at issue.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        header = json.loads(_unb64(parts[0]))
        payload = json.loads(_unb64(parts[1]))
        alg = header.get("alg")
        if alg not in ALGORITHMS or alg not in algorithms or header.get("typ") != TOKEN_TYPE:
            return None
        return uuid.UUID(str(payload["jti"]))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return None


def jwks(keys: list[SigningKey]) -> str:
    """RFC 7517 key set of the public keys; never a private part."""
    return json.dumps({"keys": [k.public_jwk() for k in keys]}, sort_keys=True)


class Reason(enum.Enum):
    """The reason of a ValidateActionToken decision (proto ``DecisionReason``)."""

    MFA_NOT_REQUIRED = "mfa_not_required"
    TOKEN_VALID = "token_valid"
    MFA_REQUIRED = "mfa_required"
    ENROLLMENT_REQUIRED = "enrollment_required"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_ALREADY_USED = "token_already_used"
    ACTION_MISMATCH = "action_mismatch"
    USER_MISMATCH = "user_mismatch"
    PAYLOAD_MISMATCH = "payload_mismatch"
    SESSION_MISMATCH = "session_mismatch"
    TOKEN_REVOKED = "token_revoked"
    ENVIRONMENT_UNKNOWN = "environment_unknown"
    APPROVAL_REQUIRED = "approval_required"
    METHOD_NOT_ALLOWED = "method_not_allowed"

    @property
    def allows(self) -> bool:
        return self in (Reason.MFA_NOT_REQUIRED, Reason.TOKEN_VALID)
