"""WebAuthn ceremonies with py_webauthn, and the checks it leaves to its caller.

py_webauthn verifies one response against the state it is handed; it does not store,
expire or consume challenges, tie a credential to a user, compare ``userHandle``,
enforce credential-id limits or keep sign counts. Those rules are here (pure) and in
the services (state). See SECURITY.md and WebAuthn Level 3 §7.1/§7.2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
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

from mfa_service.domain.settings import PasskeySettings, UserVerification
from mfa_service.errors import InvalidArgument

CHALLENGE_BYTES = 32  # WebAuthn §13.4.3: at least 16; RFD 155: 32-64
USER_HANDLE_BYTES = 32  # WebAuthn §5.4.3: at most 64, random, never the user id
MAX_CREDENTIAL_ID_BYTES = 1023  # WebAuthn §5.8.3 / §7.1 step 25
CEREMONY_TIMEOUT_MS = 5 * 60 * 1000


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_BYTES)


def new_user_handle() -> bytes:
    return os.urandom(USER_HANDLE_BYTES)


@dataclass(frozen=True, slots=True)
class StoredCredential:
    credential_id: bytes
    transports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RegisteredPasskey:
    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    aaguid: str
    backup_eligible: bool
    backed_up: bool
    user_verified: bool


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


@dataclass(frozen=True, slots=True)
class AssertionResult:
    new_sign_count: int
    backed_up: bool
    backup_eligible: bool
    user_verified: bool


def _uv(setting: UserVerification) -> UserVerificationRequirement:
    return UserVerificationRequirement(setting.value)


def _descriptors(credentials: list[StoredCredential]) -> list[PublicKeyCredentialDescriptor]:
    descriptors = []
    for c in credentials:
        transports = []
        for t in c.transports:
            try:
                transports.append(AuthenticatorTransport(t))
            except ValueError:
                continue  # a transport newer than our py_webauthn knows: leave it out
        descriptors.append(PublicKeyCredentialDescriptor(id=c.credential_id, transports=transports))
    return descriptors


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


def parse_registration(data: str, field: str) -> RegistrationCredential:
    try:
        credential = parse_registration_credential_json(data)
    except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
        raise InvalidArgument.field(field, f"not a PublicKeyCredential: {exc}") from None
    if len(credential.raw_id) > MAX_CREDENTIAL_ID_BYTES:
        raise InvalidArgument.field(
            field, f"credential id longer than {MAX_CREDENTIAL_ID_BYTES} bytes"
        )
    return credential


def parse_assertion(data: str, field: str) -> Assertion:
    try:
        return Assertion(parse_authentication_credential_json(data))
    except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
        raise InvalidArgument.field(field, f"not a PublicKeyCredential: {exc}") from None


def verify_registration(
    settings: PasskeySettings, credential: RegistrationCredential, *, challenge: bytes
) -> RegisteredPasskey | None:
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
        )
    except WebAuthnException:
        return None
    if len(verified.credential_id) > MAX_CREDENTIAL_ID_BYTES:
        return None
    return RegisteredPasskey(
        credential_id=bytes(verified.credential_id),
        public_key=bytes(verified.credential_public_key),
        sign_count=verified.sign_count,
        transports=tuple(str(t.value) for t in credential.response.transports or ()),
        aaguid=str(verified.aaguid),
        backup_eligible=verified.credential_device_type is CredentialDeviceType.MULTI_DEVICE,
        backed_up=bool(verified.credential_backed_up),
        user_verified=bool(verified.user_verified),
    )


def verify_assertion(
    settings: PasskeySettings,
    assertion: Assertion,
    *,
    challenge: bytes,
    public_key: bytes,
) -> AssertionResult | None:
    """The verified result, or None. The sign count is judged by ``sign_count_ok``."""
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
    except WebAuthnException:  # InvalidBackupFlags is not an InvalidAuthenticationResponse
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
