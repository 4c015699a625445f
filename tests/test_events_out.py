"""Security events out (DESIGN §3f), through the real server: where a user's request came
from (``mfa-client-ip``, ``mfa-client-user-agent``) on the events it wrote, what the user
must be told of (``notify_user``), and credential changes as CAEP Security Event Tokens
that verify with the service's JWKS."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import timedelta

import grpc
import jwt
import pyotp
import pytest
from authenticator import SoftAuthenticator

from flows import (
    TotpDevice,
    call,
    challenge,
    enroll_passkey,
    enroll_totp_with_codes,
    token_with_code,
    update_settings,
)
from helpers import TEST_KEY_RING, FakeClock, refused
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client
from mfa_service import app as app_module
from mfa_service.domain import events
from mfa_service.domain.audit import MAX_CLIENT_USER_AGENT, LoggedEvent
from mfa_service.services.keys import TokenKeys
from mfa_service.store import audit_log

ENV = "env-events-out"
pytestmark = pytest.mark.environments(ENV)

AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
FROM_PHONE = (("mfa-client-ip", "2001:DB8:0::7"), ("mfa-client-user-agent", AGENT))
ISSUER = "mfa-service"  # the default MFA_TOKEN_ISSUER, as the app fixture runs
RECEIVER = "https://receiver.example.com/caep"


def type_name(event: admin_pb.AuditEvent) -> str:
    return admin_pb.AuditEventType.Name(event.type).removeprefix("AUDIT_EVENT_TYPE_")


async def listed(client: Client, user: str) -> list[admin_pb.AuditEvent]:
    """The user's events, oldest first."""
    page = await call(
        client.admin.stub.ListAuditEvents(
            admin_pb.ListAuditEventsRequest(environment_id=ENV, user_id=user, page_size=100)
        )
    )
    return list(reversed(page.events))


async def enroll_from_phone(client: Client, clock: FakeClock, user: str) -> tuple[str, str]:
    """The user's first TOTP device, both calls saying where the user is: (device id,
    secret)."""
    started = await call(
        client.mfa_stub.Enroll(
            pb.EnrollRequest(environment_id=ENV, user_id=user, method=types.METHOD_TOTP),
            metadata=FROM_PHONE,
        )
    )
    done = await call(
        client.mfa_stub.CompleteEnrollment(
            pb.CompleteEnrollmentRequest(
                environment_id=ENV,
                user_id=user,
                enrollment_id=started.enrollment_id,
                totp_code=pyotp.TOTP(started.totp.secret).at(clock.now()),
                alias="Work phone",
            ),
            metadata=FROM_PHONE,
        )
    )
    return done.device.device_id, started.totp.secret


async def regenerate_codes(
    client: Client, clock: FakeClock, user: str, device: TotpDevice
) -> list[str]:
    """RegenerateRecoveryCodes, stepped up with ``device``: the new codes."""
    token = await token_with_code(
        client, clock, ENV, user, device, types.ACTION_RECOVERY_CODES_REGENERATE
    )
    done = await call(
        client.mfa_stub.RegenerateRecoveryCodes(
            pb.RegenerateRecoveryCodesRequest(environment_id=ENV, user_id=user, action_token=token)
        )
    )
    return list(done.recovery_codes)


async def delete_then_reset(
    client: Client, clock: FakeClock, user: str, device: TotpDevice, reason: str
) -> None:
    """DeleteDevice of ``device`` (stepped up with it), then an admin's ResetUserMfa."""
    unlink = await token_with_code(client, clock, ENV, user, device, types.ACTION_CREDENTIAL_UNLINK)
    await call(
        client.mfa_stub.DeleteDevice(
            pb.DeleteDeviceRequest(
                environment_id=ENV, user_id=user, device_id=device.device_id, action_token=unlink
            )
        )
    )
    await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id=user, reason=reason)
        )
    )


async def test_where_the_request_came_from_is_on_its_events(
    client: Client, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every event a user call writes carries its source, normalised: the enrollment's
    (one INSERT each), the first recovery codes', a token issued and a failed
    verification (the single-statement verification path). A call without the metadata,
    and the signer's ValidateActionToken (not a user RPC), record none. No log line,
    nor its structured fields, holds either."""
    caplog.set_level(logging.DEBUG)
    await update_settings(client, ENV, protected_actions=[types.ACTION_WAAS_SIGN])
    _, secret = await enroll_from_phone(client, clock, "ada")
    clock.advance(timedelta(seconds=30))
    issued = await call(
        client.mfa_stub.IssueActionToken(
            pb.IssueActionTokenRequest(
                environment_id=ENV,
                user_id="ada",
                challenge_id=await challenge(client, ENV, "ada"),
                proof=types.Proof(totp_code=pyotp.TOTP(secret).at(clock.now())),
                actions=[types.ACTION_WAAS_SIGN],
                single_use=True,
            ),
            metadata=FROM_PHONE,
        )
    )
    await refused(
        call(
            client.mfa_stub.VerifySession(
                pb.VerifySessionRequest(
                    environment_id=ENV,
                    user_id="ada",
                    session_id="s1",
                    challenge_id=await challenge(client, ENV, "ada"),
                    proof=types.Proof(totp_code="000000"),
                ),
                metadata=(("mfa-client-ip", "::ffff:203.0.113.7"),),
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    await call(
        client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV,
                user_id="ada",
                action=types.ACTION_WAAS_SIGN,
                token=issued.token,
            ),
            metadata=FROM_PHONE,
        )
    )
    await call(
        client.mfa_stub.AcknowledgeRecoveryCodes(
            pb.AcknowledgeRecoveryCodesRequest(environment_id=ENV, user_id="ada")
        )
    )
    sources = [
        (type_name(e), e.client_ip, e.client_user_agent) for e in await listed(client, "ada")
    ]
    phone = ("2001:db8::7", AGENT)
    assert sources == [
        ("ENROLLMENT_STARTED", *phone),
        ("ENROLLMENT_COMPLETED", *phone),
        ("RECOVERY_CODES_GENERATED", *phone),
        ("VERIFICATION_SUCCEEDED", *phone),
        ("TOKEN_ISSUED", *phone),
        ("VERIFICATION_FAILED", "203.0.113.7", ""),  # an IPv4-mapped address as IPv4
        ("TOKEN_VALIDATED", "", ""),
        ("RECOVERY_CODES_ACKNOWLEDGED", "", ""),
    ]
    assert any(r.name == "mfa_service.rpc" for r in caplog.records)  # the calls' lines
    logged_text = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    for source in ("Gecko", "2001:db8", "2001:DB8", "203.0.113.7"):
        assert source not in logged_text


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ((("mfa-client-ip", "203.0.113.300"),), "mfa-client-ip"),
        ((("mfa-client-ip", "203.0.113.0/24"),), "mfa-client-ip"),
        ((("mfa-client-ip", "fe80::1%eth0"),), "mfa-client-ip"),
        ((("mfa-client-ip", "localhost"),), "mfa-client-ip"),
        ((("mfa-client-ip", "203.0.113.7"), ("mfa-client-ip", "203.0.113.8")), "mfa-client-ip"),
        (
            (("mfa-client-user-agent", "a" * (MAX_CLIENT_USER_AGENT + 1)),),
            "mfa-client-user-agent",
        ),
    ],
    ids=["octet", "network", "scoped", "name", "twice", "long-agent"],
)
async def test_a_bad_client_source_is_refused_naming_its_key(
    client: Client, metadata: tuple[tuple[str, str], ...], key: str
) -> None:
    """Refused before anything is written, naming the metadata key; the message does not
    repeat the value."""
    enroll = pb.EnrollRequest(environment_id=ENV, user_id="bea", method=types.METHOD_TOTP)
    error = await refused(
        call(client.mfa_stub.Enroll(enroll, metadata=metadata)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == [key]
    assert all(value not in error.message for _, value in metadata)
    assert await listed(client, "bea") == []
    # At the cap, a user agent is recorded whole.
    longest = "a" * MAX_CLIENT_USER_AGENT
    await call(client.mfa_stub.Enroll(enroll, metadata=(("mfa-client-user-agent", longest),)))
    assert [e.client_user_agent for e in await listed(client, "bea")] == [longest]


async def test_the_user_is_told_of_the_listed_events_only(client: Client, clock: FakeClock) -> None:
    """notify_user on ListAuditEvents: a factor added or removed, a recovery code used, a
    regenerated set (not the first, told of as the factor it came with), an admin reset,
    a lockout; not a start, a verification, a token issued or validated."""
    await update_settings(
        client,
        ENV,
        protected_actions=[types.ACTION_WAAS_SIGN],
        lockout__max_failed_attempts=1,
    )
    device_id, secret = await enroll_from_phone(client, clock, "cleo")
    device = TotpDevice(device_id, secret)
    token = await token_with_code(client, clock, ENV, "cleo", device, types.ACTION_WAAS_SIGN)
    await call(
        client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=ENV, user_id="cleo", action=types.ACTION_WAAS_SIGN, token=token
            )
        )
    )
    codes = await regenerate_codes(client, clock, "cleo", device)
    await call(
        client.mfa_stub.VerifySession(
            pb.VerifySessionRequest(
                environment_id=ENV,
                user_id="cleo",
                session_id="s1",
                challenge_id=await challenge(client, ENV, "cleo", types.METHOD_RECOVERY_CODE),
                proof=types.Proof(recovery_code=codes[0]),
            )
        )
    )
    await delete_then_reset(client, clock, "cleo", device, "T-1")
    # A lockout: one wrong code with max_failed_attempts=1.
    _, _ = await enroll_totp_with_codes(client, clock, ENV, "dora")
    await refused(
        call(
            client.mfa_stub.VerifySession(
                pb.VerifySessionRequest(
                    environment_id=ENV,
                    user_id="dora",
                    session_id="s1",
                    challenge_id=await challenge(client, ENV, "dora"),
                    proof=types.Proof(totp_code="000000"),
                )
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_VERIFICATION_FAILED",
    )
    told = [(type_name(e), e.notify_user) for e in await listed(client, "cleo")]
    told += [(type_name(e), e.notify_user) for e in (await listed(client, "dora"))[-2:]]
    assert told == [
        ("ENROLLMENT_STARTED", False),
        ("ENROLLMENT_COMPLETED", True),
        ("RECOVERY_CODES_GENERATED", False),  # the first set
        ("VERIFICATION_SUCCEEDED", False),
        ("TOKEN_ISSUED", False),
        ("TOKEN_VALIDATED", False),
        ("VERIFICATION_SUCCEEDED", False),
        ("TOKEN_ISSUED", False),
        ("TOKEN_VALIDATED", False),  # the step-up token, consumed
        ("RECOVERY_CODES_GENERATED", True),  # regenerated
        ("RECOVERY_CODE_USED", True),
        ("VERIFICATION_SUCCEEDED", False),
        ("VERIFICATION_SUCCEEDED", False),
        ("TOKEN_ISSUED", False),
        ("TOKEN_VALIDATED", False),
        ("DEVICE_DELETED", True),
        ("USER_RESET", True),
        ("VERIFICATION_FAILED", False),
        ("LOCKED_OUT", True),
    ]
    # What the notification names the device by, added and removed.
    events_of = {type_name(e): e for e in await listed(client, "cleo")}
    for name in ("ENROLLMENT_COMPLETED", "DEVICE_DELETED"):
        assert events_of[name].details["alias"] == "Work phone"
        assert events_of[name].device_id == device_id


async def logged(app: app_module.Application, user: str) -> list[LoggedEvent]:
    """The user's events as the audit log holds them, oldest first."""
    async with app.db.transaction() as conn:
        page = await audit_log.page(conn, ENV, user_id=user, types=None, before_id=None, limit=100)
    return list(reversed(page))


def verified(token: str, jwks_json: str) -> dict[str, object]:
    """``token`` checked with nothing but pyjwt and the JWKS: signature by the key its
    ``kid`` names, ``typ``, issuer and audience."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "secevent+jwt"
    key = jwt.PyJWKSet.from_json(jwks_json)[header["kid"]]
    claims: dict[str, object] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256", "EdDSA"],
        audience=RECEIVER,
        issuer=ISSUER,
        options={"require": ["iss", "iat", "jti", "aud"]},
    )
    return claims


def changes(sets: Sequence[dict[str, object]]) -> list[tuple[object, object, object]]:
    out = []
    for claims in sets:
        change = claims["events"][events.CREDENTIAL_CHANGE]  # type: ignore[index]
        out.append((change["credential_type"], change["change_type"], change["initiating_entity"]))
    return out


async def test_credential_changes_leave_as_caep_sets_that_verify_with_the_jwks(
    app: app_module.Application, client: Client, clock: FakeClock
) -> None:
    """Signed with the service's current token key, checked against GetJwks: a TOTP
    device and a platform passkey added, codes regenerated, a device deleted, an admin
    reset; the events that are no credential change give no SET."""
    await update_settings(
        client,
        ENV,
        passkey__rp_id="example.com",
        passkey__allowed_origins=["https://app.example.com"],
    )
    device_id, secret = await enroll_from_phone(client, clock, "eve")
    device = TotpDevice(device_id, secret)
    link = await token_with_code(client, clock, ENV, "eve", device, types.ACTION_CREDENTIAL_LINK)
    authenticator = SoftAuthenticator(origin="https://app.example.com", rp_id="example.com")
    await enroll_passkey(client, ENV, "eve", authenticator, action_token=link)
    await regenerate_codes(client, clock, "eve", device)
    await delete_then_reset(client, clock, "eve", device, "ticket 7")

    keys = TokenKeys(app.db, clock, TEST_KEY_RING, "ES256")
    await keys.reload()  # the key the server signs with, read as a replica does
    jwks = (await call(client.action_tokens_stub.GetJwks(at_pb.GetJwksRequest()))).jwks_json
    sets = []
    for event in await logged(app, "eve"):
        claims = events.caep_set_claims(event, issuer=ISSUER, audience=RECEIVER)
        if claims is None:
            continue
        token = await keys.sign_security_event(claims)
        got = verified(token, jwks)
        assert got["jti"] == event.event_id
        assert got["sub_id"] == {
            "format": "complex",
            "user": {"format": "iss_sub", "iss": ISSUER, "sub": "eve"},
            "tenant": {"format": "opaque", "id": ENV},
        }
        sets.append(got)
    assert changes(sets) == [
        ("app", "create", "user"),
        ("recovery-code", "create", "user"),  # the first set, with the first factor
        ("fido2-platform", "create", "user"),
        ("recovery-code", "update", "user"),
        ("app", "delete", "user"),
        ("mfa-all", "revoke", "admin"),
    ]
    first = sets[0]["events"][events.CREDENTIAL_CHANGE]  # type: ignore[index]
    assert first["friendly_name"] == "Work phone"
    reset = sets[-1]["events"][events.CREDENTIAL_CHANGE]  # type: ignore[index]
    assert reset["reason_admin"] == {"und": "ticket 7"}
    # The JWKS holds the one active key: it is the one that signed.
    assert [k["kid"] for k in json.loads(jwks)["keys"]] == [
        jwt.get_unverified_header(await keys.sign_security_event(sets[0]))["kid"]
    ]
