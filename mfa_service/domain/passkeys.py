"""WebAuthn ceremonies with py_webauthn, and the checks it leaves to its caller.

py_webauthn verifies one response against the state it is handed; it does not store,
expire or consume challenges, tie a credential to a user, compare ``userHandle``,
enforce credential-id limits or keep sign counts. Those rules are here (pure) and in
the services (state). See SECURITY.md and WebAuthn Level 3 §7.1/§7.2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    EllipticCurvePublicKey,
    EllipticCurvePublicNumbers,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    bytes_to_base64url,
    decode_credential_public_key,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.decode_credential_public_key import (
    DecodedEC2PublicKey,
    DecodedOKPPublicKey,
    DecodedRSAPublicKey,
)
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from mfa_service.domain.devices import PasskeyCredential
from mfa_service.domain.settings import PasskeySettings, UserVerification
from mfa_service.errors import InvalidArgument

CHALLENGE_BYTES = 32  # WebAuthn §13.4.3: at least 16; RFD 155: 32-64
USER_HANDLE_BYTES = 32  # WebAuthn §5.4.3: at most 64, random, never the user id
MAX_CREDENTIAL_ID_BYTES = 1023  # WebAuthn §5.8.3 / §7.1 step 25
CEREMONY_TIMEOUT_MS = 5 * 60 * 1000
# Deeper JSON is refused before it is parsed: Python's json recurses once a level and
# raises RecursionError near 1000. A credential's JSON nests 3 levels.
MAX_JSON_DEPTH = 32
# WebAuthn L3 §5.8.4 AuthenticatorTransport; clients ignore any other value, so it is
# dropped, and each is kept once: a credential's descriptor stays small.
KNOWN_TRANSPORTS = ("usb", "nfc", "ble", "smart-card", "hybrid", "internal")
# pubKeyCredParams offered at registration, in order of preference, and the only
# algorithms a credential may use: EdDSA on Ed25519, ES256 on P-256, RS256 (py_webauthn's
# defaults).
ALGORITHMS = (
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
)
_COSE_EC2, _COSE_OKP, _COSE_RSA = 2, 1, 3  # RFC 9053 key types
_COSE_P256, _COSE_ED25519 = 1, 6  # RFC 9053 curves
RSA_MODULUS_BITS = (2048, 16384)  # NIST SP 800-131A; OpenSSL verifies up to 16384
RSA_EXPONENT_BITS = (17, 256)  # FIPS 186-5 §A.1.1: 2**16 < e < 2**256

PublicKey = EllipticCurvePublicKey | Ed25519PublicKey | RSAPublicKey


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_BYTES)


def new_user_handle() -> bytes:
    return os.urandom(USER_HANDLE_BYTES)


@dataclass(frozen=True, slots=True)
class StoredCredential:
    credential_id: bytes
    transports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Assertion:
    """A parsed (not yet verified) authentication response."""

    credential: AuthenticationCredential

    @property
    def credential_id(self) -> bytes:
        return bytes(self.credential.raw_id)

    @property
    def user_handle(self) -> bytes | None:
        handle = self.credential.response.user_handle
        return None if handle is None else bytes(handle)


def evidence(assertion: Assertion) -> dict[str, str]:
    """The assertion as its authenticator returned it, base64url (no padding): with the
    passkey's public key anyone can check the signature (docs/approvals.md)."""
    response = assertion.credential.response
    parts = {
        "credential_id": assertion.credential_id,
        "authenticator_data": bytes(response.authenticator_data),
        "client_data_json": bytes(response.client_data_json),
        "signature": bytes(response.signature),
    }
    return {name: bytes_to_base64url(value) for name, value in parts.items()}


@dataclass(frozen=True, slots=True)
class AssertionResult:
    new_sign_count: int
    backed_up: bool
    backup_eligible: bool
    user_verified: bool


def _uv(setting: UserVerification) -> UserVerificationRequirement:
    return UserVerificationRequirement(setting.value)


def known_transports(values: Iterable[str]) -> tuple[str, ...]:
    """The known transports among ``values``, each once, in the order first given."""
    return tuple(dict.fromkeys(v for v in values if v in KNOWN_TRANSPORTS))


def _descriptors(credentials: list[StoredCredential]) -> list[PublicKeyCredentialDescriptor]:
    # Stored transports are filtered again: rows from before registration filtered them.
    return [
        PublicKeyCredentialDescriptor(
            id=c.credential_id,
            transports=[AuthenticatorTransport(t) for t in known_transports(c.transports)],
        )
        for c in credentials
    ]


def registration_options(
    settings: PasskeySettings,
    *,
    rp_name: str,
    user_handle: bytes,
    user_name: str,
    exclude: list[StoredCredential],
    challenge: bytes,
) -> str:
    """PublicKeyCredentialCreationOptions as JSON (for parseCreationOptionsFromJSON)."""
    options = generate_registration_options(
        rp_id=settings.rp_id,
        rp_name=rp_name,
        user_id=user_handle,
        user_name=user_name,
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        attestation=AttestationConveyancePreference(settings.attestation.value),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=_uv(settings.user_verification),
        ),
        # §7.1: the authenticator refuses to make a second credential for this user.
        exclude_credentials=_descriptors(exclude),
        supported_pub_key_algs=list(ALGORITHMS),
    )
    return str(options_to_json(options))


def authentication_options(
    settings: PasskeySettings, *, allow: list[StoredCredential], challenge: bytes
) -> str:
    options = generate_authentication_options(
        rp_id=settings.rp_id,
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        allow_credentials=_descriptors(allow),
        user_verification=_uv(settings.user_verification),
    )
    return str(options_to_json(options))


_JSON_TOKENS = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` nests arrays and objects more than ``limit`` deep: a scan of
    brackets outside strings, without parsing. Up to the first syntax error it agrees
    with any JSON parser, and no parser reads past that."""
    if text.count("[") + text.count("{") <= limit:
        return False  # every credential a browser sends
    depth = 0
    in_string = False
    for token in _JSON_TOKENS.findall(text):
        if token == '"':
            in_string = not in_string
        elif in_string or len(token) == 2:
            continue  # a bracket in a string, or an escape
        elif token in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth = max(depth - 1, 0)
    return False


def _check_depth(data: str, field: str) -> None:
    if json_too_deep(data):
        raise InvalidArgument.field(field, f"JSON nested more than {MAX_JSON_DEPTH} levels")


# py_webauthn's parsers and verifiers document WebAuthnException, but on hostile bytes
# they and cryptography also raise KeyError, TypeError, ValueError, IndexError and more.
# They are handed only the caller's input, so whatever they raise says one thing about
# it: while parsing, it is not a credential (INVALID_ARGUMENT); while verifying, it does
# not verify (a counted failure).


def parse_registration(data: str, field: str) -> RegistrationCredential:
    _check_depth(data, field)
    try:
        credential = parse_registration_credential_json(data)
    except Exception as exc:
        raise InvalidArgument.field(field, f"not a PublicKeyCredential: {exc}") from None
    if len(credential.raw_id) > MAX_CREDENTIAL_ID_BYTES:
        raise InvalidArgument.field(
            field, f"credential id longer than {MAX_CREDENTIAL_ID_BYTES} bytes"
        )
    return credential


def parse_assertion(data: str, field: str) -> Assertion:
    _check_depth(data, field)
    try:
        return Assertion(parse_authentication_credential_json(data))
    except Exception as exc:
        raise InvalidArgument.field(field, f"not a PublicKeyCredential: {exc}") from None


def _int(value: object, *expected: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in expected


def _sized(value: object, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size


def _unsigned(value: object) -> int | None:
    """A COSE big-endian unsigned integer (a byte string, RFC 9053 §7.2)."""
    return int.from_bytes(value, "big") if isinstance(value, bytes) and value else None


def load_public_key(cose_key: bytes) -> PublicKey | None:
    """A credential public key (COSE) loaded with ``cryptography``, or None when it is not
    a key of an algorithm in ALGORITHMS on its curve (RFC 9053): EC2 coordinates of 32
    bytes forming a point of P-256, an Ed25519 key of 32 bytes, an RSA modulus of
    2048-16384 bits with an exponent as FIPS 186-5 allows."""
    try:
        key = decode_credential_public_key(cose_key)
        if isinstance(key, DecodedEC2PublicKey):
            if not (
                _int(key.kty, _COSE_EC2)
                and _int(key.alg, COSEAlgorithmIdentifier.ECDSA_SHA_256)
                and _int(key.crv, _COSE_P256)
                and _sized(key.x, 32)
                and _sized(key.y, 32)
            ):
                return None
            x, y = int.from_bytes(key.x, "big"), int.from_bytes(key.y, "big")
            return EllipticCurvePublicNumbers(x, y, SECP256R1()).public_key()  # on the curve
        if isinstance(key, DecodedOKPPublicKey):
            if not (
                _int(key.kty, _COSE_OKP)
                and _int(key.alg, COSEAlgorithmIdentifier.EDDSA)
                and _int(key.crv, _COSE_ED25519)
                and _sized(key.x, 32)
            ):
                return None
            return Ed25519PublicKey.from_public_bytes(key.x)
        if isinstance(key, DecodedRSAPublicKey):
            n, e = _unsigned(key.n), _unsigned(key.e)
            if not (
                _int(key.kty, _COSE_RSA)
                and _int(key.alg, COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256)
                and n is not None
                and e is not None
                and RSA_MODULUS_BITS[0] <= n.bit_length() <= RSA_MODULUS_BITS[1]
                and RSA_EXPONENT_BITS[0] <= e.bit_length() <= RSA_EXPONENT_BITS[1]
            ):
                return None
            return RSAPublicNumbers(e, n).public_key()
    except Exception:  # see above: a key that does not decode or load is not a key
        return None
    return None  # ML-DSA and whatever py_webauthn decodes next: not offered


def verify_registration(
    settings: PasskeySettings, credential: RegistrationCredential, *, challenge: bytes
) -> PasskeyCredential | None:
    """The new credential, or None when the response does not verify.

    py_webauthn checks type, challenge (from clientDataJSON, never from the request
    body), origin, RP ID hash, UP/UV flags, algorithm, attestation statement and
    backup flags.
    """
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=settings.rp_id,
            expected_origin=list(settings.allowed_origins),
            require_user_verification=settings.user_verification is UserVerification.REQUIRED,
            supported_pub_key_algs=list(ALGORITHMS),
        )
    except Exception:  # see above parse_registration
        return None
    if len(verified.credential_id) > MAX_CREDENTIAL_ID_BYTES:
        return None
    # With attestation "none" py_webauthn never loads the key: a key that would fail
    # every later assertion is refused now, not stored.
    if load_public_key(bytes(verified.credential_public_key)) is None:
        return None
    return PasskeyCredential(
        credential_id=bytes(verified.credential_id),
        public_key=bytes(verified.credential_public_key),
        sign_count=verified.sign_count,
        transports=known_transports(str(t.value) for t in credential.response.transports or ()),
        aaguid=str(verified.aaguid),
        backup_eligible=verified.credential_device_type is CredentialDeviceType.MULTI_DEVICE,
        backed_up=bool(verified.credential_backed_up),
    )


def verify_assertion(
    settings: PasskeySettings,
    assertion: Assertion,
    *,
    challenge: bytes,
    public_key: bytes,
) -> AssertionResult | None:
    """The verified result, or None. The sign count is judged by ``sign_count_ok``."""
    if load_public_key(public_key) is None:
        return None  # stored before registration loaded keys: it verifies nothing
    try:
        verified: Any = verify_authentication_response(
            credential=assertion.credential,
            expected_challenge=challenge,
            expected_rp_id=settings.rp_id,
            expected_origin=list(settings.allowed_origins),
            credential_public_key=public_key,
            # The counter is checked by sign_count_ok after the signature, so that only
            # a genuinely signed regression is reported as a possible clone.
            credential_current_sign_count=0,
            require_user_verification=settings.user_verification is UserVerification.REQUIRED,
        )
    except Exception:  # see above parse_registration; InvalidBackupFlags among them
        return None
    return AssertionResult(
        new_sign_count=verified.new_sign_count,
        backed_up=bool(verified.credential_backed_up),
        backup_eligible=verified.credential_device_type is CredentialDeviceType.MULTI_DEVICE,
        user_verified=bool(verified.user_verified),
    )


def sign_count_ok(stored: int, received: int) -> bool:
    """WebAuthn §7.2 step 22: both zero (synced passkeys do not count), or increasing."""
    return (stored == 0 and received == 0) or received > stored
