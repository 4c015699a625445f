"""Passkeys through gRPC with a software authenticator: enrollment, verification, and
every refusal WebAuthn §7.1/§7.2 and SECURITY.md call for."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import asyncpg
import cbor2
import grpc
import jwt
import pytest
from authenticator import SoftAuthenticator, b64url, unb64url
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flows import TotpDevice, call, enroll_totp, status, update_settings
from helpers import FakeClock, eventually, refused
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError
from mfa_service.app import Application
from mfa_service.domain import passkeys
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.domain.settings import LockoutSettings
from mfa_service.domain.verification import SignCount
from mfa_service.store import verifications as verification_store

ENV = "env-passkeys"
pytestmark = pytest.mark.environments(ENV)
ORIGIN = "https://app.example.com"
RP_ID = "example.com"
VERIFICATION_FAILED = (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_VERIFICATION_FAILED")


@pytest.fixture
async def configured(client: Client) -> None:
    await update_settings(
        client,
        ENV,
        passkey__rp_id=RP_ID,
        passkey__allowed_origins=[ORIGIN, "https://login.example.com"],
        protected_actions=[types.ACTION_WAAS_SIGN],
        session_mfa_enabled=True,
    )


async def one_row(db: asyncpg.Connection, query: str) -> asyncpg.Record:
    row = await db.fetchrow(query)
    assert row is not None
    return row


async def start(client: Client, user: str, token: str = "") -> pb.EnrollResponse:
    return await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(
                environment_id=ENV, user_id=user, method=types.METHOD_PASSKEY, action_token=token
            )
        )
    )


async def finish(client: Client, user: str, enrollment_id: str, registration: str) -> types.Device:
    response = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id=user,
                enrollment_id=enrollment_id,
                passkey_registration_json=registration,
                alias="Laptop",
            )
        )
    )
    return response.device


async def enroll(
    client: Client, user: str, authenticator: SoftAuthenticator | None = None
) -> SoftAuthenticator:
    authenticator = authenticator or SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    started = await start(client, user)
    await finish(
        client,
        user,
        started.enrollment_id,
        authenticator.register(started.passkey.creation_options_json),
    )
    return authenticator


async def passkey_challenge(client: Client, user: str) -> pb.ChallengeResponse:
    return await call(
        client.mfa_stub.Challenge(
            pb.ChallengeRequest(environment_id=ENV, user_id=user, method=types.METHOD_PASSKEY)
        )
    )


async def verify(
    client: Client, user: str, assertion: str, challenge_id: str, session: str = "s1"
) -> pb.VerifySessionResponse:
    return await call(
        client.mfa_stub.VerifySession(
            pb.VerifySessionRequest(
                environment_id=ENV,
                user_id=user,
                session_id=session,
                challenge_id=challenge_id,
                proof=types.Proof(passkey_assertion_json=assertion),
            )
        )
    )


async def link_token(client: Client, user: str, authenticator: SoftAuthenticator) -> str:
    """A CREDENTIAL_LINK action token proven with ``authenticator``: the step-up an Enroll
    next to an existing passkey needs."""
    challenge = await passkey_challenge(client, user)
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id=user,
                challenge_id=challenge.challenge_id,
                proof=types.Proof(
                    passkey_assertion_json=authenticator.assertion(
                        challenge.passkey_request_options_json
                    )
                ),
                actions=[types.ACTION_CREDENTIAL_LINK],
                single_use=True,
            )
        )
    )
    return str(issued.token)


async def assert_refused(
    client: Client,
    user: str,
    make: Any,
    code: grpc.StatusCode,
    reason: str,
) -> MfaServiceError:
    """A fresh challenge answered by ``make(options_json)``: must be refused with ``code``
    and ``reason``."""
    challenge = await passkey_challenge(client, user)
    return await refused(
        verify(client, user, make(challenge.passkey_request_options_json), challenge.challenge_id),
        code,
        reason,
    )


# --- enrollment ------------------------------------------------------------------------


async def test_creation_options(client: Client, configured: None) -> None:
    started = await start(client, "alice")
    options = json.loads(started.passkey.creation_options_json)
    assert options["rp"] == {"id": RP_ID, "name": "MFA"}
    handle = unb64url(options["user"]["id"])
    assert len(handle) == 32 and b"alice" not in handle  # random, never the user id
    assert options["user"]["name"] == "alice"
    assert len(unb64url(options["challenge"])) == 32
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["attestation"] == "none"
    assert options["timeout"] == 300000
    assert options["excludeCredentials"] == []
    again = json.loads((await start(client, "alice")).passkey.creation_options_json)
    assert again["user"]["id"] == options["user"]["id"]  # stable per user
    assert again["challenge"] != options["challenge"]


async def test_enroll_verify_and_issue_with_a_passkey(
    client: Client, configured: None, db: asyncpg.Connection
) -> None:
    authenticator = SoftAuthenticator(
        origin=ORIGIN, rp_id=RP_ID, backup_eligible=True, backed_up=True
    )
    started = await start(client, "alice")
    device = await finish(
        client,
        "alice",
        started.enrollment_id,
        authenticator.register(started.passkey.creation_options_json),
    )
    assert device.method == types.METHOD_PASSKEY
    assert device.alias == "Laptop"
    assert device.is_default
    assert (device.passkey_backup_eligible, device.passkey_backed_up) == (True, True)
    row = await db.fetchrow("SELECT * FROM devices WHERE user_id = 'alice'")
    assert row is not None
    assert bytes(row["passkey_credential_id"]) == authenticator.credential_id
    assert row["passkey_transports"] == ["internal"]
    now = await status(client, ENV, "alice", "s1")
    assert list(now.enrolled_methods) == [types.METHOD_PASSKEY]
    assert now.session_mfa_pending

    challenge = await passkey_challenge(client, "alice")
    request_options = json.loads(challenge.passkey_request_options_json)
    assert [c["id"] for c in request_options["allowCredentials"]] == [
        b64url(authenticator.credential_id)
    ]
    assert request_options["rpId"] == RP_ID
    assert request_options["userVerification"] == "required"
    verified = await verify(
        client,
        "alice",
        authenticator.assertion(challenge.passkey_request_options_json),
        challenge.challenge_id,
    )
    assert verified.method == types.METHOD_PASSKEY
    assert verified.device_id == device.device_id
    assert not (await status(client, ENV, "alice", "s1")).session_mfa_pending

    challenge = await passkey_challenge(client, "alice")
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id="alice",
                challenge_id=challenge.challenge_id,
                proof=types.Proof(
                    passkey_assertion_json=authenticator.assertion(
                        challenge.passkey_request_options_json
                    )
                ),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            )
        )
    )
    assert jwt.decode(issued.token, options={"verify_signature": False})["amr"] == ["hwk"]
    assert await db.fetchval("SELECT passkey_sign_count FROM devices") == 2


async def test_passkeys_need_configuration(client: Client) -> None:
    await refused(
        start(client, "alice"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_PASSKEY_NOT_CONFIGURED",
    )


@pytest.mark.parametrize(
    "tamper",
    [
        {"origin": "https://evil.example.net"},
        {"origin": "https://example.com"},  # the RP id itself is not an allowed origin
        {"rp_id": "evil.com"},
        {"challenge": b"\x01" * 32},
        {"kind": "webauthn.get"},
        {"uv": False},
        {"up": False},
        {"bs": True, "be": False},
    ],
)
async def test_bad_registrations_are_refused(
    client: Client, configured: None, tamper: dict[str, Any]
) -> None:
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    started = await start(client, "bob")
    await refused(
        finish(
            client,
            "bob",
            started.enrollment_id,
            authenticator.register(started.passkey.creation_options_json, **tamper),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    # The registration challenge was used up: a correct retry needs a new Enroll.
    await refused(
        finish(
            client,
            "bob",
            started.enrollment_id,
            authenticator.register(started.passkey.creation_options_json),
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENROLLMENT_NOT_FOUND",
    )
    assert list((await status(client, ENV, "bob")).enrolled_methods) == []


async def test_registration_expires_after_five_minutes(
    client: Client, clock: FakeClock, configured: None
) -> None:
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    started = await start(client, "carol")
    clock.advance(timedelta(minutes=5, seconds=1))
    await refused(
        finish(
            client,
            "carol",
            started.enrollment_id,
            authenticator.register(started.passkey.creation_options_json),
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_ENROLLMENT_NOT_FOUND",
    )


async def test_credential_ids_are_unique_across_users(client: Client, configured: None) -> None:
    authenticator = await enroll(client, "dave")
    clone = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, credential_id=authenticator.credential_id)
    started = await start(client, "erin")
    await refused(
        finish(
            client,
            "erin",
            started.enrollment_id,
            clone.register(started.passkey.creation_options_json),
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "ERROR_REASON_CREDENTIAL_ALREADY_REGISTERED",
    )


async def test_a_1024_byte_credential_id_is_refused(client: Client, configured: None) -> None:
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, credential_id=b"\x07" * 1024)
    started = await start(client, "fay")
    error = await refused(
        finish(
            client,
            "fay",
            started.enrollment_id,
            authenticator.register(started.passkey.creation_options_json),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == ["passkey_registration_json"]


async def test_a_1023_byte_credential_id_is_fine(client: Client, configured: None) -> None:
    await enroll(
        client, "gus", SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, credential_id=b"\x08" * 1023)
    )


async def test_second_passkey_needs_step_up_and_excludes_the_first(
    client: Client, clock: FakeClock, configured: None
) -> None:
    first = await enroll(client, "hal")
    await refused(
        start(client, "hal"), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED"
    )
    started = await start(client, "hal", await link_token(client, "hal", first))
    options = json.loads(started.passkey.creation_options_json)
    assert [c["id"] for c in options["excludeCredentials"]] == [b64url(first.credential_id)]
    second = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    await finish(
        client, "hal", started.enrollment_id, second.register(started.passkey.creation_options_json)
    )
    challenge = await passkey_challenge(client, "hal")
    allowed = {
        c["id"] for c in json.loads(challenge.passkey_request_options_json)["allowCredentials"]
    }
    assert allowed == {b64url(first.credential_id), b64url(second.credential_id)}
    await verify(
        client,
        "hal",
        second.assertion(challenge.passkey_request_options_json),
        challenge.challenge_id,
    )


async def test_rp_name_comes_from_the_settings(client: Client, configured: None) -> None:
    await update_settings(client, ENV, passkey__rp_name="Acme Wallet")
    options = json.loads((await start(client, "alice")).passkey.creation_options_json)
    assert options["rp"] == {"id": RP_ID, "name": "Acme Wallet"}


async def test_user_verification_and_attestation_come_from_the_settings(
    client: Client, configured: None
) -> None:
    await update_settings(
        client,
        ENV,
        passkey__user_verification=types.USER_VERIFICATION_PREFERRED,
        passkey__attestation=types.ATTESTATION_DIRECT,
    )
    started = await start(client, "abe")
    options = json.loads(started.passkey.creation_options_json)
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert options["attestation"] == "direct"
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    await finish(
        client,
        "abe",
        started.enrollment_id,
        authenticator.register(started.passkey.creation_options_json),
    )
    challenge = await passkey_challenge(client, "abe")
    assert json.loads(challenge.passkey_request_options_json)["userVerification"] == "preferred"


async def test_registration_stores_the_aaguid_and_the_counter(
    client: Client, configured: None, db: asyncpg.Connection
) -> None:
    aaguid = uuid.UUID("adce0002-35bc-c60a-648b-0b25f1f05503")
    authenticator = await enroll(
        client,
        "ada",
        SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, aaguid=aaguid.bytes, sign_count=10),
    )
    query = "SELECT passkey_aaguid, passkey_sign_count FROM devices WHERE user_id = 'ada'"
    row = await db.fetchrow(query)
    assert row is not None
    assert (row["passkey_aaguid"], row["passkey_sign_count"]) == (str(aaguid), 10)
    # The counter the registration reported is the one the first assertion must pass.
    await assert_refused(
        client,
        "ada",
        lambda options: authenticator.assertion(options, sign_count=5),
        *VERIFICATION_FAILED,
    )
    assert (await one_row(db, query))["passkey_sign_count"] == 10


async def test_the_backup_state_follows_the_assertions(
    client: Client, configured: None, db: asyncpg.Connection
) -> None:
    authenticator = await enroll(
        client, "bo", SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, backup_eligible=True)
    )
    query = "SELECT passkey_backed_up, passkey_sign_count FROM devices WHERE user_id = 'bo'"
    assert tuple(await one_row(db, query)) == (False, 0)
    for backed_up, count in ((True, 1), (False, 2)):
        challenge = await passkey_challenge(client, "bo")
        await verify(
            client,
            "bo",
            authenticator.assertion(challenge.passkey_request_options_json, bs=backed_up),
            challenge.challenge_id,
        )
        assert tuple(await one_row(db, query)) == (backed_up, count)


async def test_failed_registrations_count_toward_lockout(client: Client, configured: None) -> None:
    await update_settings(client, ENV, lockout__max_failed_attempts=2)
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    for _ in range(2):
        started = await start(client, "zed")
        await refused(
            finish(
                client,
                "zed",
                started.enrollment_id,
                authenticator.register(
                    started.passkey.creation_options_json, origin="https://evil.example.net"
                ),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "ERROR_REASON_VERIFICATION_FAILED",
        )
    started = await start(client, "zed")
    await refused(
        finish(
            client,
            "zed",
            started.enrollment_id,
            authenticator.register(started.passkey.creation_options_json),
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )
    assert list((await status(client, ENV, "zed")).enrolled_methods) == []


# --- verification refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tamper",
    [
        {"origin": "https://evil.example.net"},
        {"origin": "http://app.example.com"},
        {"rp_id": "evil.com"},
        {"challenge": b"\x02" * 32},  # signed for another challenge than the one named
        {"kind": "webauthn.create"},  # a registration ceremony's client data
        {"uv": False},
        {"up": False},
        {"user_handle": b"\x00" * 32},
    ],
)
async def test_bad_assertions_are_refused(
    client: Client, configured: None, tamper: dict[str, Any]
) -> None:
    authenticator = await enroll(client, "ivy")
    await assert_refused(
        client,
        "ivy",
        lambda options: authenticator.assertion(options, **tamper),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )


async def test_an_assertion_without_user_handle_is_fine(client: Client, configured: None) -> None:
    authenticator = await enroll(client, "jay")
    challenge = await passkey_challenge(client, "jay")
    await verify(
        client,
        "jay",
        authenticator.assertion(challenge.passkey_request_options_json, user_handle=None),
        challenge.challenge_id,
    )


async def test_user_verification_preferred_accepts_uv0(client: Client, configured: None) -> None:
    await update_settings(client, ENV, passkey__user_verification=types.USER_VERIFICATION_PREFERRED)
    authenticator = await enroll(
        client, "kai", SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, user_verified=False)
    )
    challenge = await passkey_challenge(client, "kai")
    await verify(
        client,
        "kai",
        authenticator.assertion(challenge.passkey_request_options_json),
        challenge.challenge_id,
    )


async def test_a_replayed_assertion_is_refused(client: Client, configured: None) -> None:
    authenticator = await enroll(client, "lou")
    challenge = await passkey_challenge(client, "lou")
    assertion = authenticator.assertion(challenge.passkey_request_options_json)
    await verify(client, "lou", assertion, challenge.challenge_id)
    await refused(
        verify(client, "lou", assertion, challenge.challenge_id),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )
    fresh = await passkey_challenge(client, "lou")
    await refused(
        verify(client, "lou", assertion, fresh.challenge_id),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )


async def test_a_failed_assertion_uses_up_its_challenge(client: Client, configured: None) -> None:
    authenticator = await enroll(client, "max")
    challenge = await passkey_challenge(client, "max")
    bad = authenticator.assertion(
        challenge.passkey_request_options_json, origin="https://evil.example.net"
    )
    await refused(
        verify(client, "max", bad, challenge.challenge_id),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    good = authenticator.assertion(challenge.passkey_request_options_json)
    await refused(
        verify(client, "max", good, challenge.challenge_id),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )


async def test_an_expired_challenge_is_refused(
    client: Client, clock: FakeClock, configured: None
) -> None:
    authenticator = await enroll(client, "ned")
    challenge = await passkey_challenge(client, "ned")
    clock.advance(timedelta(minutes=5))
    await refused(
        verify(
            client,
            "ned",
            authenticator.assertion(challenge.passkey_request_options_json),
            challenge.challenge_id,
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )


async def test_another_users_credential_is_refused(client: Client, configured: None) -> None:
    await enroll(client, "olga")
    mallory = await enroll(client, "mallory")
    # Mallory answers Olga's challenge with her own (valid, registered) passkey.
    await assert_refused(
        client,
        "olga",
        lambda options: mallory.assertion(options, user_handle=None),
        *VERIFICATION_FAILED,
    )


async def test_a_challenge_of_another_user_cannot_be_used(client: Client, configured: None) -> None:
    authenticator = await enroll(client, "pam")
    others = await passkey_challenge(client, "quin")
    await refused(
        verify(
            client,
            "pam",
            authenticator.assertion(others.passkey_request_options_json),
            others.challenge_id,
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )


async def test_a_sign_count_regression_is_refused_and_audited(
    client: Client, configured: None, db: asyncpg.Connection
) -> None:
    authenticator = await enroll(
        client, "ray", SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, sign_count=10)
    )
    challenge = await passkey_challenge(client, "ray")
    await verify(
        client,
        "ray",
        authenticator.assertion(challenge.passkey_request_options_json),
        challenge.challenge_id,
    )
    assert await db.fetchval("SELECT passkey_sign_count FROM devices WHERE user_id = 'ray'") == 11
    for stale in (11, 5):
        await assert_refused(
            client,
            "ray",
            lambda options, n=stale: authenticator.assertion(options, sign_count=n),
            *VERIFICATION_FAILED,
        )
    events = await db.fetch(
        "SELECT type FROM audit_events WHERE user_id = 'ray' AND type = 'SIGN_COUNT_REGRESSION'"
    )
    assert len(events) == 2


async def test_the_counter_write_decides_on_the_stored_counter_not_on_what_was_read(
    client: Client, clock: FakeClock, configured: None, db: asyncpg.Connection
) -> None:
    """Verification reads the devices without a lock, so what it read may be stale: the
    deciding statement itself refuses a counter that does not move forward (and then
    counts a failure)."""
    await enroll(client, "rex", SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, sign_count=10))
    device_id = await db.fetchval("SELECT id FROM devices WHERE user_id = 'rex'")

    async def advance(new: int) -> verification_store.Outcome:
        challenge = await passkey_challenge(client, "rex")
        concluded = await verification_store.conclude(
            db,
            EnvironmentId(ENV),
            UserId("rex"),
            uuid.UUID(challenge.challenge_id),
            now=clock.now(),
            device_id=device_id,
            advance=SignCount(new, backed_up=False),
            lockout=LockoutSettings(100, timedelta(minutes=15)),
            grant=None,
            events=[],
        )
        return concluded.outcome

    stored = await db.fetchval("SELECT passkey_sign_count FROM devices WHERE id = $1", device_id)
    failed, succeeded = verification_store.Outcome.FAILED, verification_store.Outcome.SUCCEEDED
    assert await advance(stored) is failed  # equal: a clone, or a concurrent twin
    assert await advance(stored + 2) is succeeded
    assert await advance(stored + 1) is failed  # read stale, would move the counter back
    assert (
        await db.fetchval("SELECT passkey_sign_count FROM devices WHERE id = $1", device_id)
        == stored + 2
    )
    assert await db.fetchval("SELECT failed_attempts FROM mfa_users WHERE user_id = 'rex'") == 1


async def test_synced_passkeys_with_zero_counters_keep_working(
    client: Client, configured: None
) -> None:
    synced = SoftAuthenticator(
        origin=ORIGIN, rp_id=RP_ID, counts=False, backup_eligible=True, backed_up=True
    )
    await enroll(client, "sam", synced)
    for _ in range(3):
        challenge = await passkey_challenge(client, "sam")
        await verify(
            client,
            "sam",
            synced.assertion(challenge.passkey_request_options_json),
            challenge.challenge_id,
        )


async def test_backup_state_without_eligibility_is_refused(
    client: Client, configured: None
) -> None:
    authenticator = await enroll(client, "tia")
    await assert_refused(
        client,
        "tia",
        lambda options: authenticator.assertion(options, be=False, bs=True),
        *VERIFICATION_FAILED,
    )


async def test_a_change_of_backup_eligibility_is_refused(client: Client, configured: None) -> None:
    authenticator = await enroll(client, "uri")  # registered with BE=0
    await assert_refused(
        client,
        "uri",
        lambda options: authenticator.assertion(options, be=True),
        *VERIFICATION_FAILED,
    )


async def test_concurrent_assertions_with_one_counter_succeed_at_most_once(
    app: Application, client: Client, configured: None
) -> None:
    authenticator = await enroll(client, "val")
    challenges = [await passkey_challenge(client, "val") for _ in range(10)]
    assertions = [
        authenticator.assertion(c.passkey_request_options_json, sign_count=7) for c in challenges
    ]
    await update_settings(client, ENV, lockout__max_failed_attempts=100)
    results = await asyncio.gather(
        *(
            verify(client, "val", a, c.challenge_id)
            for a, c in zip(assertions, challenges, strict=True)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, pb.VerifySessionResponse) for r in results) == 1
    assert all(
        isinstance(r, pb.VerifySessionResponse)
        or cast(MfaServiceError, r).reason == "ERROR_REASON_VERIFICATION_FAILED"
        for r in results
    )


async def test_passkey_failures_count_toward_lockout(client: Client, configured: None) -> None:
    await update_settings(client, ENV, lockout__max_failed_attempts=3)
    authenticator = await enroll(client, "wes")
    for _ in range(3):
        await assert_refused(
            client,
            "wes",
            lambda options: authenticator.assertion(options, origin="https://evil.example.net"),
            *VERIFICATION_FAILED,
        )
    await assert_refused(
        client,
        "wes",
        authenticator.assertion,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ERROR_REASON_LOCKED_OUT",
    )


async def test_a_totp_code_does_not_answer_a_passkey_challenge(
    client: Client, clock: FakeClock, configured: None
) -> None:
    device: TotpDevice = await enroll_totp(client, clock, ENV, "xia")
    challenge = await passkey_challenge(client, "xia")
    error = await refused(
        call(
            client.mfa_stub.VerifySession(
                pb.VerifySessionRequest(
                    environment_id=ENV,
                    user_id="xia",
                    session_id="s",
                    challenge_id=challenge.challenge_id,
                    proof=types.Proof(totp_code=device.code(clock.now())),
                )
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == ["proof"]


@pytest.mark.parametrize(
    "bad",
    [
        "{",
        "[]",
        '{"id": "x"}',
        json.dumps({"id": "AA", "rawId": "AA", "response": {}, "type": "public-key"}),
    ],
)
async def test_malformed_assertions_name_the_field(
    client: Client, configured: None, bad: str
) -> None:
    await enroll(client, "yan")
    challenge = await passkey_challenge(client, "yan")
    error = await refused(
        verify(client, "yan", bad, challenge.challenge_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == ["proof.passkey_assertion_json"]


async def test_an_unparsable_assertion_neither_spends_the_challenge_nor_counts(
    client: Client, configured: None, db: asyncpg.Connection
) -> None:
    """It carries no guess: the challenge stays for the real answer, and no failure is
    counted (a wrong but well-formed assertion does both: the tests above)."""
    authenticator = await enroll(client, "yul")
    challenge = await passkey_challenge(client, "yul")
    await refused(
        verify(client, "yul", "{", challenge.challenge_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert await db.fetchval("SELECT failed_attempts FROM mfa_users WHERE user_id = 'yul'") == 0
    answer = authenticator.assertion(challenge.passkey_request_options_json)
    await verify(client, "yul", answer, challenge.challenge_id)
    assert not (await status(client, ENV, "yul", "s1")).session_mfa_pending


# --- a challenge answers only its own ceremony --------------------------------------------


async def both_ceremonies(
    client: Client, user: str
) -> tuple[SoftAuthenticator, pb.EnrollResponse, pb.ChallengeResponse]:
    """A user with a passkey, a pending registration (stepped up) and a pending
    authentication, both live at once."""
    authenticator = await enroll(client, user)
    enrollment = await start(client, user, await link_token(client, user, authenticator))
    challenge = await passkey_challenge(client, user)
    return authenticator, enrollment, challenge


def challenge_bytes(options_json: str) -> bytes:
    return unb64url(json.loads(options_json)["challenge"])


def registration_over_the_challenge(
    enrollment: pb.EnrollResponse, challenge: pb.ChallengeResponse
) -> str:
    """A new authenticator's answer to the enrollment, signed over the challenge's bytes."""
    newcomer = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
    return newcomer.register(
        enrollment.passkey.creation_options_json,
        challenge=challenge_bytes(challenge.passkey_request_options_json),
    )


async def test_a_registration_challenge_does_not_answer_a_verification(
    client: Client, configured: None
) -> None:
    authenticator, enrollment, challenge = await both_ceremonies(client, "bea")
    creation_options = enrollment.passkey.creation_options_json
    # Named by the enrollment's id: there is no such authentication challenge.
    await refused(
        verify(client, "bea", authenticator.assertion(creation_options), enrollment.enrollment_id),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_CHALLENGE_NOT_FOUND",
    )
    # Signed over the registration's challenge, named by a live authentication challenge.
    await refused(
        verify(client, "bea", authenticator.assertion(creation_options), challenge.challenge_id),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    assert (await status(client, ENV, "bea", "s1")).session_mfa_pending


@pytest.mark.parametrize(
    ("named_by", "code", "reason"),
    [
        # CompleteEnrollment with the challenge's id: no such enrollment.
        ("challenge", grpc.StatusCode.NOT_FOUND, "ERROR_REASON_ENROLLMENT_NOT_FOUND"),
        # With the enrollment's id, but signed over the challenge's bytes.
        ("enrollment", grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_VERIFICATION_FAILED"),
    ],
)
async def test_an_authentication_challenge_does_not_answer_a_registration(
    client: Client, configured: None, named_by: str, code: grpc.StatusCode, reason: str
) -> None:
    _, enrollment, challenge = await both_ceremonies(client, "cody")
    registration = registration_over_the_challenge(enrollment, challenge)
    named = challenge.challenge_id if named_by == "challenge" else enrollment.enrollment_id
    await refused(finish(client, "cody", named, registration), code, reason)
    assert len((await status(client, ENV, "cody")).enrolled_methods) == 1


async def test_a_challenge_for_one_device_takes_only_that_passkey(
    client: Client, configured: None
) -> None:
    first, second = (SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID) for _ in range(2))
    started = await start(client, "dot")
    first_device = await finish(
        client, "dot", started.enrollment_id, first.register(started.passkey.creation_options_json)
    )
    started = await start(client, "dot", await link_token(client, "dot", first))
    second_device = await finish(
        client, "dot", started.enrollment_id, second.register(started.passkey.creation_options_json)
    )

    async def challenge_for(device: types.Device) -> pb.ChallengeResponse:
        return await call(
            client.mfa_stub.Challenge(
                pb.ChallengeRequest(
                    environment_id=ENV,
                    user_id="dot",
                    method=types.METHOD_PASSKEY,
                    device_id=device.device_id,
                )
            )
        )

    challenge = await challenge_for(first_device)
    options = challenge.passkey_request_options_json
    assert [c["id"] for c in json.loads(options)["allowCredentials"]] == [
        b64url(first.credential_id)
    ]
    await refused(
        verify(client, "dot", second.assertion(options), challenge.challenge_id),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    challenge = await challenge_for(second_device)
    verified = await verify(
        client,
        "dot",
        second.assertion(challenge.passkey_request_options_json),
        challenge.challenge_id,
    )
    assert verified.device_id == second_device.device_id


# --- hostile input: never INTERNAL, never a traceback ------------------------------------


def ec2_key(x: bytes, y: bytes, *, alg: int = -7, crv: int = 1) -> bytes:
    return bytes(cbor2.dumps({1: 2, 3: alg, -1: crv, -2: x, -3: y}))


def rsa_key(bits: int, exponent: int = 65537) -> bytes:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    n = numbers.public_numbers().n
    return bytes(
        cbor2.dumps({1: 3, 3: -257, -1: n.to_bytes((n.bit_length() + 7) // 8, "big"), -2: exponent})
    )


def _p384_point() -> tuple[bytes, bytes]:
    numbers = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    return numbers.x.to_bytes(48, "big"), numbers.y.to_bytes(48, "big")


ONE = (1).to_bytes(32, "big")
OFF_CURVE = ec2_key(ONE, ONE)  # (1, 1) is not a point of P-256
ONE_BYTE_COORDINATES = ec2_key(b"\x01", b"\x02")


def nested(document: str, depth: int) -> str:
    """``document`` (a JSON object) with one more member, so that it nests ``depth`` deep:
    the object is level 1, each array inside it one more."""
    inner = depth - 1
    return document[:-1] + ', "extra": ' + "[" * inner + "]" * inner + "}"


def huge_integer(document: str) -> str:
    return document[:-1] + ', "extra": ' + "9" * 5000 + "}"


def edited(path: tuple[str, ...], value: Any) -> Callable[[str], str]:
    def edit(document: str) -> str:
        parsed = json.loads(document)
        target = parsed
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return json.dumps(parsed)

    return edit


@dataclass(frozen=True)
class Hostile:
    """One hostile passkey ceremony and how it must be refused.

    ``ceremony``: "registration" (CompleteEnrollment), "session" (VerifySession) or
    "action" (IssueActionToken). ``counted``: a failed verification (the challenge or
    enrollment spent, one failure counted); otherwise refused as input before either.
    """

    ceremony: str
    code: grpc.StatusCode
    reason: str
    counted: bool
    cose_key: bytes | None = None  # registered instead of the authenticator's own key
    stored_key: bytes | None = None  # written over the stored key (a row from before)
    edit: Callable[[str], str] | None = None  # applied to the JSON sent
    fmt: str = "none"
    att_stmt: dict[str, Any] | None = None


FAILED = (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_VERIFICATION_FAILED", True)
INVALID = (grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_ARGUMENT", False)


def hostile(ceremony: str, outcome: tuple[grpc.StatusCode, str, bool], **knobs: Any) -> Hostile:
    return Hostile(ceremony, *outcome, **knobs)


HOSTILE = {
    # The COSE key of a registration: py_webauthn never loads it with fmt "none".
    "cose-empty-map": hostile("registration", FAILED, cose_key=cbor2.dumps({})),
    "cose-integer-5": hostile("registration", FAILED, cose_key=cbor2.dumps(5)),
    "cose-array": hostile("registration", FAILED, cose_key=cbor2.dumps([2, 2, 2, -7])),
    "ec2-without-coordinates": hostile(
        "registration", FAILED, cose_key=cbor2.dumps({1: 2, 3: -7, -1: 1})
    ),
    "ec2-not-on-p256": hostile("registration", FAILED, cose_key=OFF_CURVE),
    "ec2-1-byte-coordinates": hostile("registration", FAILED, cose_key=ONE_BYTE_COORDINATES),
    "ec2-p384-point-as-es256": hostile(
        "registration", FAILED, cose_key=ec2_key(*_p384_point(), crv=2)
    ),
    "ec2-text-coordinates": hostile("registration", FAILED, cose_key=ec2_key("x", "y")),  # type: ignore[arg-type]
    "ec2-alg-not-offered": hostile("registration", FAILED, cose_key=ec2_key(ONE, ONE, alg=-36)),
    "okp-31-byte-key": hostile(
        "registration", FAILED, cose_key=cbor2.dumps({1: 1, 3: -8, -1: 6, -2: b"\x01" * 31})
    ),
    "okp-x25519-curve": hostile(
        "registration", FAILED, cose_key=cbor2.dumps({1: 1, 3: -8, -1: 4, -2: b"\x01" * 32})
    ),
    "rsa-1024-bits": hostile("registration", FAILED, cose_key=rsa_key(1024)),
    "rsa-exponent-1": hostile("registration", FAILED, cose_key=rsa_key(2048, exponent=1)),
    "ml-dsa-not-offered": hostile(
        "registration", FAILED, cose_key=cbor2.dumps({1: 7, 3: -48, -1: b"\x01" * 1312})
    ),
    # Attestation statements of other formats, malformed.
    "packed-bad-signature": hostile(
        "registration", FAILED, fmt="packed", att_stmt={"alg": -7, "sig": b"\x00"}
    ),
    "packed-empty": hostile("registration", FAILED, fmt="packed", att_stmt={}),
    "tpm-empty": hostile("registration", FAILED, fmt="tpm", att_stmt={}),
    "fido-u2f-empty": hostile("registration", FAILED, fmt="fido-u2f", att_stmt={}),
    "android-key-empty": hostile("registration", FAILED, fmt="android-key", att_stmt={}),
    "apple-empty": hostile("registration", FAILED, fmt="apple", att_stmt={}),
    # The JSON itself: refused before the enrollment is spent.
    "registration-nested-1000": hostile("registration", INVALID, edit=lambda d: nested(d, 1000)),
    "registration-nested-33": hostile("registration", INVALID, edit=lambda d: nested(d, 33)),
    "registration-huge-integer": hostile("registration", INVALID, edit=huge_integer),
    # A stored key that does not load (registered before keys were checked).
    "stored-off-curve-session": hostile("session", FAILED, stored_key=OFF_CURVE),
    "stored-off-curve-action": hostile("action", FAILED, stored_key=OFF_CURVE),
    "stored-1-byte-coordinates": hostile("session", FAILED, stored_key=ONE_BYTE_COORDINATES),
    "stored-empty-map": hostile("session", FAILED, stored_key=cbor2.dumps({})),
    "stored-empty": hostile("session", FAILED, stored_key=b""),
    # Assertions that parse but cannot verify.
    "signature-not-der": hostile(
        "session", FAILED, edit=edited(("response", "signature"), b64url(b"\x00"))
    ),
    "authenticator-data-short": hostile(
        "action", FAILED, edit=edited(("response", "authenticatorData"), b64url(b"\x00" * 10))
    ),
    "client-data-not-json": hostile(
        "session", FAILED, edit=edited(("response", "clientDataJSON"), b64url(b"{"))
    ),
    # Assertions that do not parse: the challenge stays for the real answer.
    "assertion-nested-1000-session": hostile("session", INVALID, edit=lambda d: nested(d, 1000)),
    "assertion-nested-1000-action": hostile("action", INVALID, edit=lambda d: nested(d, 1000)),
    "assertion-nested-33": hostile("session", INVALID, edit=lambda d: nested(d, 33)),
    "assertion-huge-integer": hostile("action", INVALID, edit=huge_integer),
}


async def issue(
    client: Client, user: str, assertion: str, challenge_id: str
) -> pb.IssueActionTokenResponse:
    return await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id=user,
                challenge_id=challenge_id,
                proof=types.Proof(passkey_assertion_json=assertion),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            )
        )
    )


async def failures(db: asyncpg.Connection, user: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM audit_events WHERE user_id = $1 AND type = 'VERIFICATION_FAILED'",
            user,
        )
    )


@pytest.mark.parametrize("case", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_hostile_passkeys_are_refused_cleanly(
    client: Client,
    configured: None,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    case: Hostile,
) -> None:
    """Through the server: the exact status and reason, spent and counted only when the
    input parsed, never INTERNAL, and no traceback in the log."""
    user = "harry"
    calls = 0
    with caplog.at_level(logging.INFO):
        if case.ceremony == "registration":
            authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, cose_key=case.cose_key)
            started = await start(client, user)
            options = started.passkey.creation_options_json
            sent = authenticator.register(options, fmt=case.fmt, att_stmt=case.att_stmt)
            error = await refused(
                finish(client, user, started.enrollment_id, (case.edit or str)(sent)),
                case.code,
                case.reason,
            )
            honest = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)

            async def retry() -> Any:
                return await finish(client, user, started.enrollment_id, honest.register(options))

            spent = "ERROR_REASON_ENROLLMENT_NOT_FOUND"
            calls += 3
        else:
            authenticator = await enroll(client, user)
            if case.stored_key is not None:
                await db.execute(
                    "UPDATE devices SET passkey_public_key = $1 WHERE user_id = $2",
                    case.stored_key,
                    user,
                )
            challenge = await passkey_challenge(client, user)
            options = challenge.passkey_request_options_json
            answer = verify if case.ceremony == "session" else issue
            sent = authenticator.assertion(options)
            error = await refused(
                answer(client, user, (case.edit or str)(sent), challenge.challenge_id),
                case.code,
                case.reason,
            )

            async def retry() -> Any:
                return await answer(
                    client, user, authenticator.assertion(options), challenge.challenge_id
                )

            spent = "ERROR_REASON_CHALLENGE_NOT_FOUND"
            calls += 5
        if case.code == grpc.StatusCode.INVALID_ARGUMENT:
            field = (
                "passkey_registration_json"
                if case.ceremony == "registration"
                else "proof.passkey_assertion_json"
            )
            assert [v.field for v in error.field_violations] == [field]
        assert await failures(db, user) == (1 if case.counted else 0)
        if case.counted:  # spent: even the honest answer finds nothing left
            await refused(retry(), grpc.StatusCode.NOT_FOUND, spent)
        else:  # left as it was for the real answer
            await retry()
        stored = await db.fetchval("SELECT count(*) FROM devices WHERE user_id = $1", user)
        assert stored == (0 if case.ceremony == "registration" and case.counted else 1)
        # Each call's log line is written as its handler ends: wait for all of them.
        await eventually(
            lambda: sum("rpc method=" in r.getMessage() for r in caplog.records) >= calls,
            what=f"{calls} rpc log lines",
        )
    lines = [r.getMessage() for r in caplog.records]
    assert sum("rpc method=" in line for line in lines) >= calls
    assert not any("status=INTERNAL" in line for line in lines)
    assert not [r for r in caplog.records if r.exc_info or r.stack_info]
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
async def test_every_offered_algorithm_registers_and_verifies(
    client: Client, configured: None, algorithm: str
) -> None:
    """The keys registration now loads: each algorithm of pubKeyCredParams passes."""
    started = await start(client, "alg")
    offered = json.loads(started.passkey.creation_options_json)["pubKeyCredParams"]
    assert [p["alg"] for p in offered] == [-8, -7, -257]
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, algorithm=algorithm)
    await finish(
        client,
        "alg",
        started.enrollment_id,
        authenticator.register(started.passkey.creation_options_json),
    )
    challenge = await passkey_challenge(client, "alg")
    options = challenge.passkey_request_options_json
    await verify(client, "alg", authenticator.assertion(options), challenge.challenge_id)
    challenge = await passkey_challenge(client, "alg")
    options = challenge.passkey_request_options_json
    await issue(client, "alg", authenticator.assertion(options), challenge.challenge_id)


WORST_TRANSPORTS = [
    *["usb"] * 8000,  # as many as fit the 64 KiB cap of passkey_registration_json
    "carrier-pigeon",
    "cable",  # Chrome's old name for hybrid; not a WebAuthn value
    *("nfc", "ble", "smart-card", "hybrid", "internal", "usb"),
    {"not": "a string"},
]


async def test_transports_are_known_values_each_once(
    client: Client, configured: None, db: asyncpg.Connection
) -> None:
    authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID, transports=WORST_TRANSPORTS)
    await enroll(client, "tom", authenticator)
    everything = ["usb", "nfc", "ble", "smart-card", "hybrid", "internal"]
    stored = await db.fetchval("SELECT passkey_transports FROM devices WHERE user_id = 'tom'")
    assert stored == everything
    challenge = await passkey_challenge(client, "tom")
    (allowed,) = json.loads(challenge.passkey_request_options_json)["allowCredentials"]
    assert allowed["transports"] == everything


async def test_request_options_stay_small_with_ten_passkeys_of_the_worst_transports(
    client: Client, configured: None, db: asyncpg.Connection
) -> None:
    """Ten passkeys (the most a user may have) with the longest credential ids and the
    worst transports a client can send; one of them a row stored before transports were
    filtered, 9,000 x "usb". Before: 63 KB for that one credential alone."""
    authenticators: list[SoftAuthenticator] = []
    for i in range(10):
        authenticator = SoftAuthenticator(
            origin=ORIGIN,
            rp_id=RP_ID,
            credential_id=bytes([i]) * 1023,
            transports=WORST_TRANSPORTS,
        )
        token = await link_token(client, "una", authenticators[0]) if authenticators else ""
        started = await start(client, "una", token)
        registration = authenticator.register(started.passkey.creation_options_json)
        await finish(client, "una", started.enrollment_id, registration)
        authenticators.append(authenticator)
    await db.execute(
        "UPDATE devices SET passkey_transports = $1 WHERE passkey_credential_id = $2",
        ["usb"] * 9000 + ["carrier-pigeon", "nfc"],
        authenticators[0].credential_id,
    )
    challenge = await passkey_challenge(client, "una")
    options = challenge.passkey_request_options_json
    allowed = {c["id"]: c["transports"] for c in json.loads(options)["allowCredentials"]}
    assert allowed[b64url(authenticators[0].credential_id)] == ["usb", "nfc"]
    assert len(allowed) == 10
    # Measured: 14.9 KB for ten 1023-byte ids with all six transports; the send limit
    # is 256 KiB.
    assert len(options.encode()) < 16 * 1024


@pytest.mark.parametrize(
    ("text", "too_deep"),
    [
        ("[" * 32 + "]" * 32, False),  # the limit itself
        ("[" * 33 + "]" * 33, True),
        ("{" + '"a": {' * 31 + "}" * 32, False),
        ("{" + '"a": {' * 32 + "}" * 33, True),
        ("[" * 1000, True),  # unclosed: refused before json raises RecursionError
        ('"' + "[" * 1000 + '"', False),  # brackets in a string do not nest
        ('["\\"' + "[" * 100 + '"]', False),  # an escaped quote does not end the string
        ('["\\\\"' + ", [" * 33 + "]" * 34, True),  # an escaped backslash does
        ("[" + ", ".join(["[]"] * 1000) + "]", False),  # many, but side by side
        ("]" * 1000 + "[" * 33, True),  # stray closers never lower the count below 0
        ("", False),
    ],
)
def test_json_depth_is_scanned_before_parsing(text: str, too_deep: bool) -> None:
    assert passkeys.json_too_deep(text) is too_deep
    if not too_deep and text.startswith(("[", "{")) and text.count("[") == text.count("]"):
        json.loads(text)  # the case is valid JSON: the scan agrees with a real parser
