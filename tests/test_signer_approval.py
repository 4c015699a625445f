"""The signer's offline check of a passkey approval (docs/approvals.md, "Checking a
passkey approval offline"), without the server: the claims are built as the service will
build them (its ``domain.approvals.bind``), the software authenticator signs the approval
hash as its WebAuthn challenge, and the token is signed with a throwaway key.

``approved_token`` and ``passkey_claims`` are meant to be reused by the end-to-end test
through the real server, which will compare them with what the service issues.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from authenticator import SoftAuthenticator, b64url, cose_key, unb64url
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_signer_example import run_cli

from examples.signer import (
    ApprovalNotVerified,
    VerifiedApproval,
    check_passkey_approval,
    check_token_approval,
    token_claims,
)
from mfa_service.domain import approvals
from mfa_service.domain.model import Action, EnvironmentId, UserId

ORIGIN = "https://wallet.example.com"
RP_ID = "example.com"
ENV = "env-signer"
USER = "alice"
MESSAGE = b"pay 1.5 ETH to 0x12ab"
DISPLAY_TEXT = "Send 1.5 ETH to 0x12…ab on Base"
EXPIRES_AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def passkey_claims(
    authenticator: SoftAuthenticator,
    message: bytes = MESSAGE,
    *,
    display_text: str = DISPLAY_TEXT,
    actions: tuple[Action, ...] = (Action.WAAS_SIGN,),
    single_use: bool = True,
    session_id: str | None = None,
    **assertion: Any,
) -> dict[str, Any]:
    """The claims of an action token from a passkey approval of ``message``: the approval
    bound as the service binds it, and the authenticator's answer to request options
    whose challenge is that hash (``assertion``: SoftAuthenticator.assertion's knobs)."""
    challenge_id = uuid.uuid4()
    bound = approvals.bind(
        approvals.approval(
            actions,
            hashlib.sha256(message).digest(),
            display_text,
            single_use=single_use,
            session_id=session_id,
        ),
        environment_id=EnvironmentId(ENV),
        user_id=UserId(USER),
        challenge_id=challenge_id,
        expires_at=EXPIRES_AT,
    )
    options = {"challenge": b64url(bound.hash), "rpId": RP_ID, "userVerification": "required"}
    credential = json.loads(authenticator.assertion(json.dumps(options), **assertion))
    response = credential["response"]
    claims: dict[str, Any] = {
        "iss": "mfa-service",
        "aud": "mfa-action",
        "sub": USER,
        "env": ENV,
        "act": [a.name for a in bound.approval.actions],
        "su": single_use,
        "jti": str(uuid.uuid4()),
        "iat": int((EXPIRES_AT - timedelta(minutes=5)).timestamp()),
        "exp": int((EXPIRES_AT + timedelta(minutes=5)).timestamp()),
        "amr": ["hwk"],
        "pd": b64url(hashlib.sha256(message).digest()),
        "apv": b64url(bound.hash),
        "approval": {
            "challenge_id": str(challenge_id),
            "expires_at": int(EXPIRES_AT.timestamp()),
            "display_text": display_text,
        },
        "passkey_evidence": {
            "credential_id": credential["rawId"],
            "authenticator_data": response["authenticatorData"],
            "client_data_json": response["clientDataJSON"],
            "signature": response["signature"],
        },
    }
    if session_id is not None:
        claims["sid"] = session_id
    return claims


def approved_token(claims: dict[str, Any], key: Ed25519PrivateKey, kid: str = "k1") -> str:
    """``claims`` as an action token signed like the service's (EdDSA, kid, typ)."""
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "mfa-action+jwt"})


def jwks_of(key: Ed25519PrivateKey, kid: str = "k1") -> dict[str, Any]:
    jwk = json.loads(jwt.get_algorithm_by_name("EdDSA").to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"}]}


def flip(text: str, index: int) -> str:
    """base64url ``text`` with one byte of what it encodes changed."""
    data = bytearray(unb64url(text))
    data[index] ^= 0x01
    return b64url(bytes(data))


def refusal(claims: dict[str, Any], message: bytes, public_key: bytes) -> str:
    with pytest.raises(ApprovalNotVerified) as refused:
        check_passkey_approval(claims, message, public_key)
    return refused.value.reason


@pytest.fixture(params=["ES256", "EdDSA", "RS256"])
def authenticator(request: pytest.FixtureRequest) -> SoftAuthenticator:
    return SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, algorithm=request.param)


@pytest.fixture
def public_key(authenticator: SoftAuthenticator) -> bytes:
    return cose_key(authenticator.private_key)


# --- the check passes ----------------------------------------------------------------


def test_the_passkey_approval_of_this_message_verifies(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator)
    verified = check_passkey_approval(claims, MESSAGE, public_key)
    assert verified == VerifiedApproval(
        approval_hash=unb64url(claims["apv"]),
        display_text=DISPLAY_TEXT,
        credential_id=authenticator.credential_id,
    )


def test_an_approval_of_several_actions_in_a_session_verifies(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(
        authenticator,
        actions=(Action.WAAS_SIGN, Action.WAAS_EXPORT),
        single_use=False,
        session_id="s1",
        display_text='Sign "ü" \\ 🚀 and export',
    )
    assert check_passkey_approval(claims, MESSAGE, public_key).display_text.endswith("export")


# --- one changed byte, anywhere, and it fails ---------------------------------------------


def test_one_changed_byte_of_the_message_fails(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator)
    for index in (0, len(MESSAGE) // 2, len(MESSAGE) - 1):
        changed = bytearray(MESSAGE)
        changed[index] ^= 0x01
        reason = refusal(claims, bytes(changed), public_key)
        assert reason == "apv is not the approval of this message and these claims"


def test_one_changed_byte_of_the_display_text_fails(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator)
    claims["approval"]["display_text"] = DISPLAY_TEXT.replace("1.5", "1.6")
    reason = refusal(claims, MESSAGE, public_key)
    assert reason == "apv is not the approval of this message and these claims"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", "bob"),
        ("env", "env-other"),
        ("act", ["WAAS_EXPORT"]),
        ("su", False),
        ("sid", "s2"),
    ],
)
def test_any_other_claim_the_passkey_signed_fails(
    authenticator: SoftAuthenticator, public_key: bytes, claim: str, value: Any
) -> None:
    claims = passkey_claims(authenticator)
    claims[claim] = value
    reason = refusal(claims, MESSAGE, public_key)
    assert reason == "apv is not the approval of this message and these claims"


def test_another_challenge_or_expiry_fails(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator)
    other = {**claims, "approval": {**claims["approval"], "challenge_id": str(uuid.uuid4())}}
    assert refusal(other, MESSAGE, public_key).startswith("apv is not")
    expiry = claims["approval"]["expires_at"]
    later = {**claims, "approval": {**claims["approval"], "expires_at": expiry + 1}}
    assert refusal(later, MESSAGE, public_key).startswith("apv is not")
    fraction = {**claims, "approval": {**claims["approval"], "expires_at": expiry + 0.5}}
    assert refusal(fraction, MESSAGE, public_key).startswith("malformed approval claims")


def test_one_changed_byte_of_the_signature_fails(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator)
    evidence = claims["passkey_evidence"]
    for index in (0, 10, len(unb64url(evidence["signature"])) - 1):
        changed = {
            **claims,
            "passkey_evidence": {**evidence, "signature": flip(evidence["signature"], index)},
        }
        assert refusal(changed, MESSAGE, public_key) == "the passkey's signature does not verify"


def test_one_changed_byte_of_client_data_json_fails(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator)
    evidence = claims["passkey_evidence"]
    client_data = unb64url(evidence["client_data_json"])
    origin_at = client_data.index(b"wallet")  # still JSON, still a webauthn.get for apv
    changed = {
        **claims,
        "passkey_evidence": {
            **evidence,
            "client_data_json": flip(evidence["client_data_json"], origin_at),
        },
    }
    assert refusal(changed, MESSAGE, public_key) == "the passkey's signature does not verify"
    for index in range(len(client_data)):  # any byte: refused, for one reason or another
        anywhere = {
            **claims,
            "passkey_evidence": {
                **evidence,
                "client_data_json": flip(evidence["client_data_json"], index),
            },
        }
        with pytest.raises(ApprovalNotVerified):
            check_passkey_approval(anywhere, MESSAGE, public_key)


def test_one_changed_byte_of_the_authenticator_data_fails(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator)
    evidence = claims["passkey_evidence"]
    changed = {
        **claims,
        "passkey_evidence": {
            **evidence,
            "authenticator_data": flip(evidence["authenticator_data"], 0),
        },
    }
    assert refusal(changed, MESSAGE, public_key) == "the passkey's signature does not verify"


def test_another_passkeys_public_key_fails(authenticator: SoftAuthenticator) -> None:
    claims = passkey_claims(authenticator)
    for algorithm in ("ES256", "EdDSA", "RS256"):
        other = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, algorithm=algorithm)
        reason = refusal(claims, MESSAGE, cose_key(other.private_key))
        assert reason == "the passkey's signature does not verify"
    assert refusal(claims, MESSAGE, b"not cbor") == (
        "the passkey public key is not a usable COSE key"
    )


# --- what the assertion itself must say -------------------------------------------------------


def test_a_registration_ceremony_is_not_an_approval(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator, kind="webauthn.create")
    assert refusal(claims, MESSAGE, public_key) == (
        "client_data_json is a 'webauthn.create', not webauthn.get"
    )


def test_a_signature_over_another_challenge_fails(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator, challenge=b"\x00" * 32)
    assert refusal(claims, MESSAGE, public_key) == "client_data_json's challenge is not apv"


def test_the_user_must_have_been_present(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator, up=False)
    assert refusal(claims, MESSAGE, public_key) == (
        "the authenticator did not see the user present (UP flag)"
    )


@pytest.mark.parametrize("authenticator", ["ES256"], indirect=True)
def test_a_token_without_passkey_evidence_or_approval_fails(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    claims = passkey_claims(authenticator)
    totp = {k: v for k, v in claims.items() if k != "passkey_evidence"}  # a TOTP approval
    assert refusal(totp, MESSAGE, public_key) == (
        "the approval was not made with a passkey (no passkey_evidence)"
    )
    plain = {k: v for k, v in totp.items() if k not in ("apv", "approval")}  # no approval
    assert refusal(plain, MESSAGE, public_key) == "the token carries no approval (apv)"
    no_text = {**claims, "approval": {"challenge_id": claims["approval"]["challenge_id"]}}
    assert refusal(no_text, MESSAGE, public_key).startswith("malformed approval claims")


# --- the token ------------------------------------------------------------------------------


@pytest.mark.parametrize("authenticator", ["EdDSA"], indirect=True)
def test_the_check_runs_on_a_token_with_or_without_the_jwks(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    service_key = Ed25519PrivateKey.generate()
    claims = passkey_claims(authenticator)
    token = approved_token(claims, service_key)
    assert token_claims(token) == claims
    assert check_token_approval(token, MESSAGE, public_key).display_text == DISPLAY_TEXT
    verified = check_token_approval(token, MESSAGE, public_key, jwks=jwks_of(service_key))
    assert verified.display_text == DISPLAY_TEXT

    # With the JWKS, a token the service did not sign is refused before anything else.
    forged = approved_token(claims, Ed25519PrivateKey.generate())
    with pytest.raises(ApprovalNotVerified, match="not a valid action token"):
        check_token_approval(forged, MESSAGE, public_key, jwks=jwks_of(service_key))
    with pytest.raises(ApprovalNotVerified, match="key is not in the service's JWKS"):
        check_token_approval(token, MESSAGE, public_key, jwks=jwks_of(service_key, kid="k2"))
    with pytest.raises(ApprovalNotVerified, match="not a valid action token"):
        token_claims("not-a-jwt")


# --- the command line: --verify-approval --------------------------------------------------


@pytest.mark.parametrize("authenticator", ["ES256"], indirect=True)
async def test_the_command_line_checks_the_approval_before_it_asks_the_service(
    authenticator: SoftAuthenticator, public_key: bytes
) -> None:
    token = approved_token(passkey_claims(authenticator), Ed25519PrivateKey.generate())
    # Nothing listens there: reaching the service at all means the check passed.
    common = ["--target", "127.0.0.1:1", "--env", ENV, "--user", USER, "--token", token]
    common += ["--verify-approval", "--passkey-public-key", b64url(public_key)]

    code, out, err = await run_cli(*common, "--message", "pay 1.5 ETH to 0x12ac")
    assert (code, out) == (3, "")
    assert err.splitlines()[-1] == (
        "refused: approval not verified: apv is not the approval of this message and these claims"
    )

    code, out, err = await run_cli(*common, "--message", MESSAGE.decode())
    assert (code, out) == (1, "")
    assert err.splitlines()[-1].startswith("mfa-service error: ")

    code, out, err = await run_cli(*common[:-2], "--message", MESSAGE.decode())
    assert code == 2
    assert "--verify-approval and --passkey-public-key go together" in err
