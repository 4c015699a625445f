"""Approvals (DESIGN §3d): a challenge bound to what the user approves.

The passkey signs the approval's hash (its WebAuthn challenge is that hash); a TOTP code or
a recovery code binds it on the server side. IssueActionToken on a bound challenge covers
exactly the approval, and anything else asked spends the challenge; VerifySession refuses
a bound challenge. The token carries ``apv``, the approval's other parts and, for a
passkey, the assertion: with the COSE key ListDevices returns, anyone checks it offline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
from authenticator import SoftAuthenticator
from cryptography.exceptions import InvalidSignature
from webauthn.helpers import decode_credential_public_key
from webauthn.helpers.decoded_public_key_to_cryptography import (
    decoded_public_key_to_cryptography,
)
from webauthn.helpers.verify_signature import verify_signature

from examples.signer import ApprovalNotVerified, check_token_approval
from flows import TotpDevice, call, enroll_passkey, start_totp, update_settings
from helpers import FakeClock, refused
from mfa.v1 import action_token_service_pb2 as apb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service.domain import approvals
from mfa_service.domain.model import Action, EnvironmentId, UserId

ENV = "env-approvals"
pytestmark = pytest.mark.environments(ENV)
ORIGIN = "https://app.example.com"
RP_ID = "example.com"
SIGN, EXPORT = types.ACTION_WAAS_SIGN, types.ACTION_WAAS_EXPORT
MESSAGE = b"pay 1.5 ETH to 0x12ab"
DIGEST = hashlib.sha256(MESSAGE).digest()
TEXT = "Send 1.5 ETH to 0x12\u2026ab on Base"
MISMATCH = (grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_APPROVAL_MISMATCH")
GONE = (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_CHALLENGE_NOT_FOUND")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def approval(**overrides: Any) -> types.Approval:
    fields: dict[str, Any] = {
        "actions": [SIGN],
        "payload_digest": DIGEST,
        "display_text": TEXT,
        "single_use": True,
    }
    return types.Approval(**(fields | overrides))


@pytest.fixture
async def configured(client: Client) -> None:
    await update_settings(
        client,
        ENV,
        passkey__rp_id=RP_ID,
        passkey__allowed_origins=[ORIGIN],
        protected_actions=[SIGN, EXPORT],
    )


async def totp_user(client: Client, clock: FakeClock, user: str) -> tuple[TotpDevice, list[str]]:
    """A user with an authenticator app, and their recovery codes."""
    started = await start_totp(client, ENV, user)
    device = TotpDevice("", started.totp.secret)
    done = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id=user,
                enrollment_id=started.enrollment_id,
                totp_code=device.code(clock.now()),
            )
        )
    )
    clock.advance(timedelta(seconds=30))
    return device, list(done.recovery_codes)


async def bound_challenge(
    client: Client,
    user: str,
    method: types.Method.ValueType = types.METHOD_TOTP,
    **overrides: Any,
) -> pb.ChallengeResponse:
    return await call(
        client.mfa_stub.Challenge(
            pb.ChallengeRequest(
                environment_id=ENV, user_id=user, method=method, approval=approval(**overrides)
            )
        )
    )


async def issue(
    client: Client, user: str, challenge_id: str, proof: types.Proof, **request: Any
) -> pb.IssueActionTokenResponse:
    return await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV, user_id=user, challenge_id=challenge_id, proof=proof, **request
            )
        )
    )


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def expected_hash(user: str, challenge: pb.ChallengeResponse, **overrides: Any) -> bytes:
    """The hash as the service's own encoding (domain.approvals) computes it from the
    response; the independent implementations are held to it in test_approval_hash."""
    message = approval(**overrides)
    bound = approvals.bind(
        approvals.approval(
            tuple(Action[types.Action.Name(a).removeprefix("ACTION_")] for a in message.actions),
            message.payload_digest,
            message.display_text,
            single_use=message.single_use,
            session_id=message.session_id or None,
        ),
        environment_id=EnvironmentId(ENV),
        user_id=UserId(user),
        challenge_id=uuid.UUID(challenge.challenge_id),
        expires_at=challenge.expires_at.ToDatetime(tzinfo=UTC),
    )
    return bound.hash


async def tokens_of(db: asyncpg.Connection, user: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM action_tokens WHERE environment_id = $1 AND user_id = $2",
        ENV,
        user,
    )
    return count


async def validate(
    client: Client,
    user: str,
    token: str,
    digest: bytes = DIGEST,
    action: types.Action.ValueType = SIGN,
) -> tuple[str, str]:
    request = apb.ValidateActionTokenRequest(
        environment_id=ENV, user_id=user, action=action, token=token, payload_digest=digest
    )
    reply = await call(client.action_tokens_stub.ValidateActionToken(request))
    return types.Decision.Name(reply.decision), types.DecisionReason.Name(reply.reason)


# --- TOTP and recovery codes: bound on the server side ---------------------------------


async def test_a_totp_approval_mints_exactly_what_was_approved(
    client: Client, clock: FakeClock, configured: None
) -> None:
    device, _ = await totp_user(client, clock, "ada")
    challenge = await bound_challenge(client, "ada")
    assert challenge.expires_at.nanos == 0  # a bound challenge expires at a whole second
    assert challenge.approval_hash == expected_hash("ada", challenge)
    issued = await issue(
        client, "ada", challenge.challenge_id, types.Proof(totp_code=device.code(clock.now()))
    )
    claims = claims_of(issued.token)
    # Empty request fields were taken from the approval.
    assert claims["act"] == ["WAAS_SIGN"]
    assert claims["su"] is True
    assert unb64url(claims["pd"]) == DIGEST
    assert unb64url(claims["apv"]) == challenge.approval_hash
    assert claims["approval"] == {
        "challenge_id": challenge.challenge_id,
        "expires_at": challenge.expires_at.seconds,
        "display_text": TEXT,
    }
    assert "passkey_evidence" not in claims  # a code signs nothing
    assert await validate(client, "ada", issued.token, DIGEST[::-1]) == (
        "DECISION_DENY",
        "DECISION_REASON_PAYLOAD_MISMATCH",
    )
    assert await validate(client, "ada", issued.token) == (
        "DECISION_ALLOW",
        "DECISION_REASON_TOKEN_VALID",
    )


@pytest.mark.parametrize("method", ["passkey", "totp", "recovery_code"])
@pytest.mark.parametrize(
    "asked",
    [
        {"payload_digest": hashlib.sha256(b"pay 2 ETH").digest()},
        {"actions": [EXPORT]},
        {"actions": [SIGN, EXPORT]},
        {"session_id": "another-session"},
        {"single_use": True},  # the approval is for a multi-use token
    ],
    ids=["digest", "action", "more-actions", "session", "single-use"],
)
async def test_asking_a_bound_challenge_for_anything_else_spends_it(
    client: Client,
    clock: FakeClock,
    configured: None,
    db: asyncpg.Connection,
    asked: Any,
    method: str,
) -> None:
    """Whatever the factor: the mismatch is refused and spends the challenge, no token is
    minted, and the right request afterwards on that challenge is refused too."""
    user = f"bo-{method}"
    device, codes = await totp_user(client, clock, user)
    if method == "passkey":
        authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
        link = await token_for_link(client, clock, user, device)
        await enroll_passkey(client, ENV, user, authenticator, link)
    kind = {
        "passkey": types.METHOD_PASSKEY,
        "totp": types.METHOD_TOTP,
        "recovery_code": types.METHOD_RECOVERY_CODE,
    }[method]
    challenge = await bound_challenge(client, user, kind, single_use=False, session_id="s-1")
    if method == "passkey":
        proof = types.Proof(
            passkey_assertion_json=authenticator.assertion(challenge.passkey_request_options_json)
        )
    elif method == "totp":
        proof = types.Proof(totp_code=device.code(clock.now()))
    else:
        proof = types.Proof(recovery_code=codes[0])
    before = await tokens_of(db, user)
    await refused(issue(client, user, challenge.challenge_id, proof, **asked), *MISMATCH)
    # Spent: the right request on that challenge is refused, and no token was minted.
    await refused(issue(client, user, challenge.challenge_id, proof), *GONE)
    assert await tokens_of(db, user) == before


async def token_for_link(client: Client, clock: FakeClock, user: str, device: TotpDevice) -> str:
    """An ACTION_CREDENTIAL_LINK token with the user's authenticator app (a second factor
    needs the first)."""
    challenge = await call(
        client.mfa_stub.Challenge(
            pb.ChallengeRequest(environment_id=ENV, user_id=user, method=types.METHOD_TOTP)
        )
    )
    issued = await issue(
        client,
        user,
        challenge.challenge_id,
        types.Proof(totp_code=device.code(clock.now())),
        actions=[types.ACTION_CREDENTIAL_LINK],
        single_use=True,
    )
    clock.advance(timedelta(seconds=30))
    return issued.token


async def test_repeating_the_approval_terms_is_allowed(
    client: Client, clock: FakeClock, configured: None
) -> None:
    device, _ = await totp_user(client, clock, "cy")
    challenge = await bound_challenge(client, "cy", actions=[EXPORT, SIGN], session_id="s-2")
    issued = await issue(
        client,
        "cy",
        challenge.challenge_id,
        types.Proof(totp_code=device.code(clock.now())),
        actions=[SIGN, EXPORT],  # the same set, in another order
        payload_digest=DIGEST,
        single_use=True,
        session_id="s-2",
    )
    claims = claims_of(issued.token)
    assert sorted(claims["act"]) == ["WAAS_EXPORT", "WAAS_SIGN"]
    assert claims["sid"] == "s-2"


async def test_a_recovery_code_approval_is_bound_the_same_way(
    client: Client, clock: FakeClock, configured: None, db: asyncpg.Connection
) -> None:
    _, codes = await totp_user(client, clock, "dee")
    challenge = await bound_challenge(client, "dee", types.METHOD_RECOVERY_CODE)
    await refused(
        issue(
            client,
            "dee",
            challenge.challenge_id,
            types.Proof(recovery_code=codes[0]),
            payload_digest=hashlib.sha256(b"other").digest(),
        ),
        *MISMATCH,
    )
    # The mismatch is decided before the code is checked: the code is not used up.
    assert await db.fetchval(
        "SELECT count(*) FROM recovery_codes WHERE user_id = 'dee' AND used_at IS NULL"
    ) == len(codes)
    fresh = await bound_challenge(client, "dee", types.METHOD_RECOVERY_CODE)
    issued = await issue(client, "dee", fresh.challenge_id, types.Proof(recovery_code=codes[0]))
    claims = claims_of(issued.token)
    assert unb64url(claims["apv"]) == fresh.approval_hash
    assert "passkey_evidence" not in claims


async def test_a_bound_challenge_is_not_a_login(
    client: Client, clock: FakeClock, configured: None, db: asyncpg.Connection
) -> None:
    device, _ = await totp_user(client, clock, "eve")
    challenge = await bound_challenge(client, "eve")
    request = pb.VerifySessionRequest(
        environment_id=ENV,
        user_id="eve",
        session_id="s",
        challenge_id=challenge.challenge_id,
        proof=types.Proof(totp_code=device.code(clock.now())),
    )
    await refused(call(client.mfa_stub.VerifySession(request)), *MISMATCH)
    await refused(call(client.mfa_stub.VerifySession(request)), *GONE)
    assert await db.fetchval("SELECT count(*) FROM verified_sessions WHERE user_id = 'eve'") == 0


async def test_a_wrong_code_on_a_bound_challenge_counts_and_mints_nothing(
    client: Client, clock: FakeClock, configured: None, db: asyncpg.Connection
) -> None:
    device, _ = await totp_user(client, clock, "fin")
    challenge = await bound_challenge(client, "fin")
    wrong = f"{(int(device.code(clock.now())) + 1) % 10**6:06d}"
    await refused(
        issue(client, "fin", challenge.challenge_id, types.Proof(totp_code=wrong)),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert await tokens_of(db, "fin") == 0
    assert await db.fetchval("SELECT failed_attempts FROM mfa_users WHERE user_id = 'fin'") == 1


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("approval.actions", {"actions": []}),
        ("approval.actions", {"actions": [SIGN, SIGN]}),
        ("approval.payload_digest", {"payload_digest": b""}),
        ("approval.payload_digest", {"payload_digest": b"x" * 31}),
        ("approval.display_text", {"display_text": ""}),
        ("approval.display_text", {"display_text": "x" * 257}),
        ("approval.display_text", {"display_text": "Send\n1 ETH"}),
        # A bidirectional override would show "Send 1 ETH to exe.gnp" (Trojan Source).
        ("approval.display_text", {"display_text": "Send 1 ETH to \u202epng.exe"}),
        ("approval.session_id", {"session_id": " s"}),
        ("approval.single_use", {"actions": [types.ACTION_CREDENTIAL_LINK], "single_use": False}),
    ],
)
async def test_a_malformed_approval_is_refused_naming_its_field(
    client: Client, configured: None, field: str, overrides: dict[str, Any]
) -> None:
    error = await refused(
        bound_challenge(client, "gil", **overrides),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == [field]


async def test_an_approval_of_an_unprotected_action_is_refused(
    client: Client, configured: None
) -> None:
    await refused(
        bound_challenge(client, "hal", actions=[types.ACTION_WAAS_RESHARE]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_ACTION_NOT_PROTECTED",
    )


async def test_an_action_whose_policy_requires_approval_takes_no_plain_challenge(
    client: Client, clock: FakeClock, configured: None, db: asyncpg.Connection
) -> None:
    """DESIGN §3e: Sign with require_approval. A plain challenge mints nothing (and is
    not spent: it may still serve a login); a bound one mints a token that validates."""
    await update_settings(
        client, ENV, action_policies=[types.ActionPolicy(action=SIGN, require_approval=True)]
    )
    device, _ = await totp_user(client, clock, "kai")
    plain = await call(
        client.mfa_stub.Challenge(
            pb.ChallengeRequest(environment_id=ENV, user_id="kai", method=types.METHOD_TOTP)
        )
    )
    code = device.code(clock.now())
    await refused(
        issue(
            client,
            "kai",
            plain.challenge_id,
            types.Proof(totp_code=code),
            actions=[SIGN],
            payload_digest=DIGEST,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_APPROVAL_REQUIRED",
    )
    assert await tokens_of(db, "kai") == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM challenges WHERE id = $1", uuid.UUID(plain.challenge_id)
        )
        == 1
    )
    bound = await bound_challenge(client, "kai")
    issued = await issue(client, "kai", bound.challenge_id, types.Proof(totp_code=code))
    assert await validate(client, "kai", issued.token) == (
        "DECISION_ALLOW",
        "DECISION_REASON_TOKEN_VALID",
    )


# --- passkeys: the authenticator signs the approval -------------------------------------


def check_evidence(token: str, message: bytes, cose_key: bytes, user: str) -> None:
    """What a third party does with the token, the message and the COSE key only."""
    claims = claims_of(token)
    approval_claims, evidence = claims["approval"], claims["passkey_evidence"]
    document = {
        "type": "mfa.v1.approval",
        "version": 1,
        "environment_id": claims["env"],
        "user_id": claims["sub"],
        "challenge_id": approval_claims["challenge_id"],
        "expires_at": approval_claims["expires_at"],
        "actions": sorted(f"ACTION_{a}" for a in claims["act"]),
        "payload_digest": hashlib.sha256(message).hexdigest(),
        "display_text": approval_claims["display_text"],
        "single_use": claims["su"],
        "session_id": claims.get("sid", ""),
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    recomputed = hashlib.sha256(encoded.encode()).digest()
    assert b64url(recomputed) == claims["apv"], "the approval does not match this message"
    client_data = unb64url(evidence["client_data_json"])
    parsed = json.loads(client_data)
    assert parsed["type"] == "webauthn.get"
    assert parsed["challenge"] == claims["apv"]
    authenticator_data = unb64url(evidence["authenticator_data"])
    assert authenticator_data[32] & 0x01, "user presence"
    decoded = decode_credential_public_key(cose_key)
    verify_signature(
        public_key=decoded_public_key_to_cryptography(decoded),
        signature_alg=decoded.alg,
        signature=unb64url(evidence["signature"]),
        data=authenticator_data + hashlib.sha256(client_data).digest(),
    )
    assert claims["sub"] == user


async def test_a_passkey_signs_the_approval_and_anyone_can_check_it_offline(
    client: Client, clock: FakeClock, configured: None
) -> None:
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    await enroll_passkey(client, ENV, "ivy", authenticator)
    challenge = await bound_challenge(client, "ivy", types.METHOD_PASSKEY)
    options = json.loads(challenge.passkey_request_options_json)
    assert unb64url(options["challenge"]) == challenge.approval_hash  # what it signs
    assertion = authenticator.assertion(challenge.passkey_request_options_json)
    issued = await issue(
        client, "ivy", challenge.challenge_id, types.Proof(passkey_assertion_json=assertion)
    )
    [device] = (
        await call(
            client.mfa_stub.ListDevices(pb.ListDevicesRequest(environment_id=ENV, user_id="ivy"))
        )
    ).devices
    cose_key = device.passkey_public_key
    assert cose_key  # public: ListDevices returns it

    check_evidence(issued.token, MESSAGE, cose_key, "ivy")
    # The signer's own check (examples/signer), with the service's JWKS: it passes for
    # this message only.
    jwks = json.loads(
        (await call(client.action_tokens_stub.GetJwks(apb.GetJwksRequest()))).jwks_json
    )
    verified = check_token_approval(issued.token, MESSAGE, cose_key, jwks=jwks)
    assert verified.display_text == TEXT
    with pytest.raises(ApprovalNotVerified):
        check_token_approval(issued.token, MESSAGE + b"0", cose_key, jwks=jwks)
    with pytest.raises(AssertionError, match="does not match"):
        check_evidence(issued.token, MESSAGE + b"0", cose_key, "ivy")  # another payload
    # Another display text, as a front end that showed other words would have it.
    claims = claims_of(issued.token)
    claims["approval"]["display_text"] = TEXT.replace("1.5", "15")
    forged = jwt.encode(claims, "k" * 32, algorithm="HS256")
    with pytest.raises(AssertionError, match="does not match"):
        check_evidence(forged, MESSAGE, cose_key, "ivy")
    # Another key (another user's passkey) does not verify the signature.
    other = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    with pytest.raises(InvalidSignature):
        check_evidence(issued.token, MESSAGE, other._cose_key(), "ivy")


async def test_a_passkey_assertion_over_another_approval_is_refused(
    client: Client, clock: FakeClock, configured: None, db: asyncpg.Connection
) -> None:
    """An assertion collected for approval A answers nothing for approval B."""
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    await enroll_passkey(client, ENV, "jo", authenticator)
    first = await bound_challenge(client, "jo", types.METHOD_PASSKEY)
    second = await bound_challenge(
        client, "jo", types.METHOD_PASSKEY, payload_digest=hashlib.sha256(b"B").digest()
    )
    signed_first = authenticator.assertion(first.passkey_request_options_json)
    await refused(
        issue(client, "jo", second.challenge_id, types.Proof(passkey_assertion_json=signed_first)),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert await tokens_of(db, "jo") == 0


def test_the_encoding_is_rfc8785_json_of_the_documented_members() -> None:
    bound = approvals.bind(
        approvals.approval(
            (Action.WAAS_SIGN, Action.WAAS_EXPORT),
            DIGEST,
            TEXT,
            single_use=True,
            session_id=None,
        ),
        environment_id=EnvironmentId("env-a"),
        user_id=UserId("alice"),
        challenge_id=uuid.UUID("7d1a4e1e-2f0a-4a39-9d8a-6b0b7c4d2e11"),
        expires_at=datetime(2026, 12, 7, 14, 0, tzinfo=UTC),
    )
    assert json.loads(bound.encoded) == {
        "actions": ["ACTION_WAAS_EXPORT", "ACTION_WAAS_SIGN"],
        "challenge_id": "7d1a4e1e-2f0a-4a39-9d8a-6b0b7c4d2e11",
        "display_text": TEXT,
        "environment_id": "env-a",
        "expires_at": int(datetime(2026, 12, 7, 14, 0, tzinfo=UTC).timestamp()),
        "payload_digest": DIGEST.hex(),
        "session_id": "",
        "single_use": True,
        "type": "mfa.v1.approval",
        "user_id": "alice",
        "version": 1,
    }
    assert bound.encoded == json.dumps(
        json.loads(bound.encoded), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert bound.hash == hashlib.sha256(bound.encoded.encode()).digest()
    with pytest.raises(ValueError, match="whole second"):
        approvals.bind(
            bound.approval,
            environment_id=EnvironmentId("env-a"),
            user_id=UserId("alice"),
            challenge_id=uuid.uuid4(),
            expires_at=datetime(2026, 12, 7, 14, 0, 0, 5, tzinfo=UTC),
        )
