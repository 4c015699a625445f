"""Action tokens: asymmetric JWTs proving a user passed MFA for specific actions.

RFC 8725 rules hold here, not in pyjwt's defaults: the algorithm is pinned (never taken
from the header), ``typ`` must be ours, ``iss`` and ``aud`` must match exactly, every
claim we rely on is required, and time comes from the caller (expiry, issued-at in the
future). Single use is decided in PostgreSQL, never here.
"""

from __future__ import annotations

import base64
import enum
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mfa_service.domain.model import Action, EnvironmentId, Method, UserId

TOKEN_TYPE = "mfa-action+jwt"
ALGORITHMS = ("ES256", "EdDSA")
LEEWAY = timedelta(seconds=30)  # ASVS 9.2.1: at most 30 s of clock skew
REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "jti", "env", "act", "su"]
# RFC 8176 authentication method references for the factor that was passed.
AMR = {Method.TOTP: "otp", Method.PASSKEY: "hwk", Method.RECOVERY_CODE: "rcode"}

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class TokenProblem(enum.Enum):
    """Why a token was refused (mirrors the DENY reasons of ValidateActionToken)."""

    INVALID = "invalid"
    EXPIRED = "expired"
    USER_MISMATCH = "user_mismatch"
    ACTION_MISMATCH = "action_mismatch"
    SESSION_MISMATCH = "session_mismatch"
    PAYLOAD_MISMATCH = "payload_mismatch"


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
    return jwt.encode(
        payload,
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.kid, "typ": TOKEN_TYPE},
    )


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the action about to run is: the token must match all of it."""

    environment_id: EnvironmentId
    user_id: UserId
    action: Action
    payload_digest: bytes | None
    session_id: str | None


def decode(
    token: str,
    *,
    keys: Mapping[str, SigningKey],
    algorithm: str,
    issuer: str,
    audience: str,
    now: datetime,
) -> ActionClaims | TokenProblem:
    """The token's claims if it is one of ours and well formed, else ``INVALID``/``EXPIRED``."""
    try:
        header = jwt.get_unverified_header(token)
        key = keys.get(header.get("kid", ""))
        # RFC 8725 §3.1: the algorithm is ours, never the header's; a key of another
        # algorithm (or an HS* trick keyed with a public key) cannot pass.
        if key is None or key.algorithm != algorithm or header.get("alg") != algorithm:
            return TokenProblem.INVALID
        decoded = jwt.decode_complete(
            token,
            key.public_key,
            algorithms=[algorithm],
            issuer=issuer,
            audience=audience,
            options={
                "require": REQUIRED_CLAIMS,
                "verify_exp": False,  # checked below against the injected clock
                "verify_iat": False,
                "verify_nbf": False,
                "strict_aud": True,
            },
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return TokenProblem.INVALID
    if decoded["header"].get("typ") != TOKEN_TYPE:  # RFC 8725 §3.11: explicit typing
        return TokenProblem.INVALID
    return _claims(decoded["payload"], now)


def _claims(payload: Mapping[str, Any], now: datetime) -> ActionClaims | TokenProblem:
    try:
        issued_at = datetime.fromtimestamp(int(payload["iat"]), UTC)
        expires_at = datetime.fromtimestamp(int(payload["exp"]), UTC)
        actions = tuple(Action[name] for name in payload["act"])
        methods = {v: k for k, v in AMR.items()}
        claims = ActionClaims(
            jti=uuid.UUID(str(payload["jti"])),
            environment_id=EnvironmentId(str(payload["env"])),
            user_id=UserId(str(payload["sub"])),
            actions=actions,
            single_use=bool(payload["su"]),
            issued_at=issued_at,
            expires_at=expires_at,
            method=methods[payload.get("amr", ["?"])[0]],
            payload_digest=_unb64(payload["pd"]) if "pd" in payload else None,
            session_id=str(payload["sid"]) if "sid" in payload else None,
        )
    except (KeyError, ValueError, TypeError, IndexError, OverflowError):
        return TokenProblem.INVALID
    if not actions or issued_at > now + LEEWAY or expires_at <= issued_at:
        return TokenProblem.INVALID
    if expires_at <= now:  # we issued it: no leeway past its own expiry
        return TokenProblem.EXPIRED
    return claims


def mismatch(claims: ActionClaims, expected: Expectation) -> TokenProblem | None:
    """The first way the token does not fit the action about to run (DESIGN §3 order)."""
    if (claims.environment_id, claims.user_id) != (expected.environment_id, expected.user_id):
        return TokenProblem.USER_MISMATCH
    if expected.action not in claims.actions:
        return TokenProblem.ACTION_MISMATCH
    if claims.session_id is not None and claims.session_id != expected.session_id:
        return TokenProblem.SESSION_MISMATCH
    if claims.payload_digest is not None and claims.payload_digest != expected.payload_digest:
        return TokenProblem.PAYLOAD_MISMATCH
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

    @property
    def allows(self) -> bool:
        return self in (Reason.MFA_NOT_REQUIRED, Reason.TOKEN_VALID)

    @classmethod
    def of(cls, problem: TokenProblem) -> Reason:
        return cls[
            f"TOKEN_{problem.name}" if problem.name in ("INVALID", "EXPIRED") else problem.name
        ]
