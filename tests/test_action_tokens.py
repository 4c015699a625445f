"""Action tokens: issuing, every ValidateActionToken decision, forgeries, concurrency,
idempotent retries and key rotation, through the real server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import duration_pb2

from flows import (
    TotpDevice,
    call,
    challenge,
    enroll_totp,
    enroll_totp_with_codes,
    issue_action_token,
    update_settings,
)
from helpers import TEST_KEY_RING, FakeClock, eventually, last_audit_type, refused
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import CHANNEL_OPTIONS, Client
from mfa_service import app as app_module
from mfa_service.app import Application, rotate_signing_key
from mfa_service.domain import tokens
from mfa_service.domain.settings import MULTI_USE_TTL_RANGE, SINGLE_USE_TTL_RANGE
from mfa_service.services.keys import RETIRED_KEY_KEPT

ENV = "env-tokens"
pytestmark = pytest.mark.environments(ENV)
SIGN, EXPORT, REFRESH = types.ACTION_WAAS_SIGN, types.ACTION_WAAS_EXPORT, types.ACTION_WAAS_REFRESH
TOTP, PASSKEY, RECOVERY = types.METHOD_TOTP, types.METHOD_PASSKEY, types.METHOD_RECOVERY_CODE
DIGEST = hashlib.sha256(b"transfer 1 ETH to bob").digest()
OTHER_DIGEST = hashlib.sha256(b"transfer 100 ETH to mallory").digest()


@pytest.fixture
async def alice(client: Client, clock: FakeClock) -> TotpDevice:
    await update_settings(client, ENV, protected_actions=[SIGN, EXPORT])
    return await enroll_totp(client, clock, ENV, "alice")


async def issue(
    client: Client,
    clock: FakeClock,
    device: TotpDevice,
    *,
    user: str = "alice",
    env: str = ENV,
    actions: tuple[types.Action.ValueType, ...] = (SIGN,),
    single_use: bool = True,
    payload_digest: bytes = b"",
    session_id: str = "",
) -> pb.IssueActionTokenResponse:
    clock.advance(timedelta(seconds=30))  # a fresh time step: codes are never reused
    return await issue_action_token(
        client,
        env,
        user,
        device.code(clock.now()),
        await challenge(client, env, user),
        actions=actions,
        single_use=single_use,
        payload_digest=payload_digest,
        session_id=session_id,
    )


async def validate(
    client: Client,
    token: str,
    *,
    action: types.Action.ValueType = SIGN,
    user: str = "alice",
    env: str = ENV,
    payload_digest: bytes = b"",
    session_id: str = "",
    idempotency_key: str = "",
) -> tuple[str, str]:
    response = await call(
        client.action_tokens_stub.ValidateActionToken(
            at_pb.ValidateActionTokenRequest(
                environment_id=env,
                user_id=user,
                action=action,
                token=token,
                payload_digest=payload_digest,
                session_id=session_id,
                idempotency_key=idempotency_key,
            )
        )
    )
    return (
        types.Decision.Name(response.decision).removeprefix("DECISION_"),
        types.DecisionReason.Name(response.reason).removeprefix("DECISION_REASON_"),
    )


async def get_jwks(client: Client) -> dict[str, Any]:
    response = await call(client.action_tokens_stub.GetJwks(at_pb.GetJwksRequest()))
    jwks: dict[str, Any] = json.loads(response.jwks_json)
    return jwks


def verified_offline(token: str, jwks: dict[str, Any], clock: FakeClock) -> dict[str, Any]:
    """The claims of ``token`` checked the way another service would, with plain pyjwt
    and the JWKS: key by ``kid``, the key's algorithm only, exact ``aud`` and ``iss``
    (``exp`` against the test's clock, which pyjwt does not know)."""
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in jwks["keys"] if k["kid"] == kid]
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=[jwk["alg"]],
        audience="mfa-action",
        issuer="mfa-service",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iat"] <= clock.now().timestamp() < claims["exp"]
    return claims


@contextlib.asynccontextmanager
async def serving(database_url: str, clock: FakeClock, algorithm: str) -> AsyncIterator[Client]:
    """A server of its own on the test's database, signing with ``algorithm``."""
    application = await app_module.start(
        database_url=database_url,
        key_ring=TEST_KEY_RING,
        clock=clock,
        pool_size=4,
        token_algorithm=algorithm,
    )
    try:
        async with Client.connect(f"127.0.0.1:{application.port}", insecure=True) as client:
            yield client
    finally:
        await application.stop()


# --- every decision reason ------------------------------------------------------------


async def test_mfa_not_required_for_unprotected_actions_and_unenrolled_users(
    client: Client, alice: TotpDevice
) -> None:
    assert await validate(client, "", action=REFRESH) == ("ALLOW", "MFA_NOT_REQUIRED")
    assert await validate(client, "", user="bob") == ("ALLOW", "MFA_NOT_REQUIRED")
    # The credential actions guard only what a user has.
    assert await validate(client, "", user="bob", action=types.ACTION_CREDENTIAL_LINK) == (
        "ALLOW",
        "MFA_NOT_REQUIRED",
    )


async def test_mfa_required_without_a_token(client: Client, alice: TotpDevice) -> None:
    assert await validate(client, "") == ("DENY", "MFA_REQUIRED")
    for action in (types.ACTION_CREDENTIAL_LINK, types.ACTION_CREDENTIAL_UNLINK):
        assert await validate(client, "", action=action) == ("DENY", "MFA_REQUIRED")


async def test_enrollment_required_with_onboarding(client: Client, alice: TotpDevice) -> None:
    await update_settings(client, ENV, require_at_onboarding=True)
    assert await validate(client, "", user="newcomer") == ("DENY", "ENROLLMENT_REQUIRED")
    assert await validate(client, "", user="newcomer", action=REFRESH) == (
        "ALLOW",
        "MFA_NOT_REQUIRED",
    )


async def test_token_valid_then_already_used(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    issued = await issue(client, clock, alice)
    assert await validate(client, issued.token) == ("ALLOW", "TOKEN_VALID")
    assert await validate(client, issued.token) == ("DENY", "TOKEN_ALREADY_USED")


async def test_an_unknown_environment_allows_nothing(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    """Finding 5 (issue 17): a name never created (a typo, another case) answered
    ALLOW / MFA_NOT_REQUIRED, whatever the token. DESIGN §3c: DENY, and nothing written."""
    valid = await issue(client, clock, alice)
    for env in ("env-tokenz", "Env-Tokens", "ENV-TOKENS"):
        for token in ("", "garbage", valid.token):
            for action in (SIGN, REFRESH, types.ACTION_CREDENTIAL_UNLINK):
                assert await validate(client, token, env=env, action=action) == (
                    "DENY",
                    "ENVIRONMENT_UNKNOWN",
                )
    assert await validate(client, "", env="env-typo", idempotency_key="k-1") == (
        "DENY",
        "ENVIRONMENT_UNKNOWN",
    )
    # The token was not spent by the refusals: it still works where it was issued.
    assert await validate(client, valid.token) == ("ALLOW", "TOKEN_VALID")


async def test_token_invalid_and_expired(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    assert await validate(client, "not.a.jwt") == ("DENY", "TOKEN_INVALID")
    issued = await issue(client, clock, alice)
    clock.advance(timedelta(minutes=5))
    assert await validate(client, issued.token) == ("DENY", "TOKEN_EXPIRED")


@pytest.mark.environments("env-other")
async def test_action_user_payload_and_session_mismatches(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    sign = await issue(client, clock, alice)
    assert await validate(client, sign.token, action=EXPORT) == ("DENY", "ACTION_MISMATCH")
    assert await validate(client, sign.token, user="bob") == ("DENY", "USER_MISMATCH")
    await update_settings(client, "env-other", protected_actions=[SIGN])
    assert await validate(client, sign.token, env="env-other") == ("DENY", "USER_MISMATCH")

    bound = await issue(client, clock, alice, payload_digest=DIGEST)
    assert await validate(client, bound.token, payload_digest=OTHER_DIGEST) == (
        "DENY",
        "PAYLOAD_MISMATCH",
    )
    assert await validate(client, bound.token) == ("DENY", "PAYLOAD_MISMATCH")
    assert await validate(client, bound.token, payload_digest=DIGEST) == ("ALLOW", "TOKEN_VALID")

    in_session = await issue(client, clock, alice, session_id="sess-1")
    assert await validate(client, in_session.token, session_id="sess-2") == (
        "DENY",
        "SESSION_MISMATCH",
    )
    assert await validate(client, in_session.token) == ("DENY", "SESSION_MISMATCH")
    assert await validate(client, in_session.token, session_id="sess-1") == ("ALLOW", "TOKEN_VALID")
    # A mismatch does not consume: the rightful use above still worked.


async def test_a_reset_revokes_outstanding_tokens(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    single = await issue(client, clock, alice)
    multi = await issue(client, clock, alice, single_use=False)
    reset = await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="alice", reason="ticket-42")
        )
    )
    assert (reset.devices_removed, reset.tokens_revoked) == (1, 2)
    assert await validate(client, single.token) == ("DENY", "TOKEN_REVOKED")
    assert await validate(client, multi.token) == ("DENY", "TOKEN_REVOKED")
    assert await validate(client, "") == ("ALLOW", "MFA_NOT_REQUIRED")  # no factor left


async def test_a_reset_counts_only_tokens_that_could_still_have_been_used(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    """tokens_revoked (issue 21): a consumed single-use token, an expired one and one
    revoked by an earlier reset are not counted (the consumed one is revoked all the
    same: test_a_remembered_allow_never_outlives_its_token)."""
    expired = await issue(client, clock, alice)
    clock.advance(timedelta(minutes=5))
    consumed = await issue(client, clock, alice)
    assert await validate(client, consumed.token) == ("ALLOW", "TOKEN_VALID")
    live = await issue(client, clock, alice)
    multi_used = await issue(client, clock, alice, single_use=False)
    assert await validate(client, multi_used.token) == ("ALLOW", "TOKEN_VALID")

    def reset() -> Any:
        return call(
            client.admin.stub.ResetUserMfa(
                admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="alice", reason="t-21")
            )
        )

    first = await reset()
    assert (first.devices_removed, first.tokens_revoked) == (1, 2)  # live, multi_used
    assert await validate(client, live.token) == ("DENY", "TOKEN_REVOKED")
    assert await validate(client, multi_used.token) == ("DENY", "TOKEN_REVOKED")
    assert await validate(client, consumed.token) == ("DENY", "TOKEN_REVOKED")
    assert await validate(client, expired.token) == ("DENY", "TOKEN_EXPIRED")
    second = await reset()
    assert (second.devices_removed, second.tokens_revoked) == (0, 0)


async def test_the_checks_come_in_order(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    """Not issued, expired, revoked, environment and user, action, session, payload
    digest, then consumption: a token wrong in two ways gets the earlier reason."""
    bound = await issue(client, clock, alice, payload_digest=DIGEST, session_id="s-1")
    assert await validate(client, bound.token, user="bob", action=EXPORT) == (
        "DENY",
        "USER_MISMATCH",
    )
    assert await validate(client, bound.token, action=EXPORT, session_id="s-2") == (
        "DENY",
        "ACTION_MISMATCH",
    )
    assert await validate(client, bound.token, session_id="s-2", payload_digest=OTHER_DIGEST) == (
        "DENY",
        "SESSION_MISMATCH",
    )
    assert await validate(client, bound.token, session_id="s-1", payload_digest=OTHER_DIGEST) == (
        "DENY",
        "PAYLOAD_MISMATCH",
    )
    rightful: dict[str, Any] = {"session_id": "s-1", "payload_digest": DIGEST}
    assert await validate(client, bound.token, **rightful) == ("ALLOW", "TOKEN_VALID")
    # Used, and asked for another action: the mismatch, not the consumption.
    assert await validate(client, bound.token, action=EXPORT, **rightful) == (
        "DENY",
        "ACTION_MISMATCH",
    )
    assert await validate(client, bound.token, **rightful) == ("DENY", "TOKEN_ALREADY_USED")

    old = await issue(client, clock, alice)
    clock.advance(timedelta(minutes=3))
    young = await issue(client, clock, alice)
    clock.advance(timedelta(minutes=2))  # old has expired, young has not
    await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="alice")
        )
    )
    for wrong in ({"action": EXPORT}, {"user": "bob"}):
        assert await validate(client, old.token, **wrong) == ("DENY", "TOKEN_EXPIRED")
        assert await validate(client, young.token, **wrong) == ("DENY", "TOKEN_REVOKED")
    clock.advance(timedelta(minutes=3))  # young is now revoked and expired
    assert await validate(client, young.token) == ("DENY", "TOKEN_EXPIRED")


def test_every_decision_reason_is_reachable() -> None:
    """Each of the proto's DecisionReason values is the expected answer of some
    ValidateActionToken call these tests make through the server (an ``== ("ALLOW" |
    "DENY", reason)`` assertion in this file), and no test expects one the proto lacks."""
    source = Path(__file__).read_text()
    produced = set(re.findall(r'\(\s*"(?:ALLOW|DENY)",\s*"([A-Z_]+)",?\s*\)', source))
    declared = {
        name.removeprefix("DECISION_REASON_")
        for name in types.DecisionReason.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
        if name != "DECISION_REASON_UNSPECIFIED"
    }
    assert declared == produced


# --- the token itself ------------------------------------------------------------------


async def test_token_claims(client: Client, clock: FakeClock, alice: TotpDevice) -> None:
    issued = await issue(
        client, clock, alice, actions=(SIGN, EXPORT), payload_digest=DIGEST, session_id="s-9"
    )
    header = jwt.get_unverified_header(issued.token)
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert header["alg"] == "ES256"
    assert header["typ"] == "mfa-action+jwt"
    assert header["kid"]
    assert claims["iss"] == "mfa-service"
    assert claims["aud"] == "mfa-action"
    assert claims["sub"] == "alice"
    assert claims["env"] == ENV
    assert claims["act"] == ["WAAS_SIGN", "WAAS_EXPORT"]
    assert claims["su"] is True
    assert uuid.UUID(claims["jti"])
    assert claims["amr"] == ["otp"]
    assert claims["sid"] == "s-9"
    assert base64.urlsafe_b64decode(claims["pd"] + "=") == DIGEST
    assert claims["iat"] == int(clock.now().timestamp())
    assert claims["exp"] - claims["iat"] == 300
    assert issued.expires_at.ToDatetime(tzinfo=UTC) == clock.now() + timedelta(minutes=5)
    multi = await issue(client, clock, alice, single_use=False)
    multi_claims = jwt.decode(multi.token, options={"verify_signature": False})
    assert multi_claims["exp"] - multi_claims["iat"] == 600


async def test_lifetimes_follow_the_settings(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    settings = types.Settings(environment_id=ENV)
    settings.single_use_token_ttl.FromTimedelta(timedelta(seconds=90))
    await client.admin.update_settings(settings, ["single_use_token_ttl"])
    issued = await issue(client, clock, alice)
    clock.advance(timedelta(seconds=90))
    assert await validate(client, issued.token) == ("DENY", "TOKEN_EXPIRED")


async def test_a_multi_use_token_works_until_it_expires(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    issued = await issue(client, clock, alice, single_use=False, actions=(SIGN, EXPORT))
    for _ in range(3):
        assert await validate(client, issued.token) == ("ALLOW", "TOKEN_VALID")
        assert await validate(client, issued.token, action=EXPORT) == ("ALLOW", "TOKEN_VALID")
        clock.advance(timedelta(minutes=3))
    clock.advance(timedelta(minutes=1))
    assert await validate(client, issued.token) == ("DENY", "TOKEN_EXPIRED")


# --- forgeries -------------------------------------------------------------------------


async def signing_key(db: asyncpg.Connection) -> tokens.SigningKey:
    """The service's own private key, read the way only an insider could: for forging
    tokens whose signature is right and whose claims are wrong."""
    row = await db.fetchrow("SELECT * FROM signing_keys WHERE retired_at IS NULL")
    assert row is not None
    private = tokens.load_private_key(
        TEST_KEY_RING.decrypt(row["private_key"], context=b"signing-key\x00" + row["kid"].encode())
    )
    return tokens.SigningKey(
        row["kid"], row["algorithm"], private, private.public_key(), row["created_at"]
    )


def forged(
    good: str, key: Any, *, algorithm: str = "ES256", drop: tuple[str, ...] = (), **changes: Any
) -> str:
    header = jwt.get_unverified_header(good)
    claims = jwt.decode(good, options={"verify_signature": False})
    header_changes = {k[2:]: v for k, v in changes.items() if k.startswith("h_")}
    claims.update({k: v for k, v in changes.items() if not k.startswith("h_")})
    for name in drop:
        claims.pop(name)
    headers = {k: v for k, v in {**header, **header_changes}.items() if k not in ("alg",)}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def unsigned(good: str, **changes: Any) -> str:
    """alg=none: header and payload, empty signature."""
    header = {**jwt.get_unverified_header(good), "alg": "none"}
    claims = {**jwt.decode(good, options={"verify_signature": False}), **changes}

    def part(d: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


@pytest.mark.parametrize(
    "forgery",
    [
        "alg_none",
        "hs256_with_public_key",
        "wrong_typ",
        "plain_jwt_typ",
        "wrong_aud",
        "aud_prefix",
        "aud_superstring",
        "aud_list",
        "wrong_iss",
        "iss_prefix",
        "iss_superstring",
        "unknown_kid",
        "unknown_kid_real_key",
        "missing_jti",
        "missing_exp",
        "missing_act",
        "future_iat",
        "tampered_payload",
        "other_key",
    ],
)
async def test_forged_tokens_are_refused(
    client: Client, clock: FakeClock, alice: TotpDevice, db: asyncpg.Connection, forgery: str
) -> None:
    good = (await issue(client, clock, alice)).token
    key = await signing_key(db)
    private = key.private_key
    public_pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(clock.now().timestamp())
    other = tokens.generate_key("ES256", now=clock.now())
    token = {
        "alg_none": lambda: unsigned(good),
        "hs256_with_public_key": lambda: _hs256(good, public_pem),
        "wrong_typ": lambda: forged(good, private, h_typ="JWT"),
        "plain_jwt_typ": lambda: forged(good, private, h_typ="at+jwt"),
        "wrong_aud": lambda: forged(good, private, aud="someone-else"),
        "aud_prefix": lambda: forged(good, private, aud="mfa-actio"),
        "aud_superstring": lambda: forged(good, private, aud="mfa-action-x"),
        "aud_list": lambda: forged(good, private, aud=["other", "mfa-action"]),
        "wrong_iss": lambda: forged(good, private, iss="evil-service"),
        "iss_prefix": lambda: forged(good, private, iss="mfa-servic"),
        "iss_superstring": lambda: forged(good, private, iss="mfa-service-x"),
        "unknown_kid": lambda: forged(good, other.private_key, h_kid="not-a-key"),
        # Signed by the right key, but naming no key: a verifier must not fall back.
        "unknown_kid_real_key": lambda: forged(good, private, h_kid="not-a-key"),
        "missing_jti": lambda: forged(good, private, drop=("jti",)),
        "missing_exp": lambda: forged(good, private, drop=("exp",)),
        "missing_act": lambda: forged(good, private, drop=("act",)),
        "future_iat": lambda: forged(good, private, iat=now + 120, exp=now + 400),
        "tampered_payload": lambda: _swap_payload(good, sub="alice", act=["WAAS_EXPORT"]),
        "other_key": lambda: forged(good, other.private_key),
    }[forgery]()
    assert await validate(client, token) == ("DENY", "TOKEN_INVALID")
    # The genuine token was not consumed by any of that.
    assert await validate(client, good) == ("ALLOW", "TOKEN_VALID")


def _hs256(good: str, secret: bytes) -> str:
    """RFC 8725 §2.1 key confusion: HMAC keyed with the public key (pyjwt refuses to do
    it with a PEM key, so the signature is built by hand)."""
    import hmac

    header = {**jwt.get_unverified_header(good), "alg": "HS256"}
    claims = jwt.decode(good, options={"verify_signature": False})

    def enc(d: object) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=")

    signing_input = enc(header) + b"." + enc(claims)
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


def _swap_payload(good: str, **changes: Any) -> str:
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{new}.{signature}"


async def test_a_validly_signed_token_never_recorded_is_refused(
    client: Client, clock: FakeClock, alice: TotpDevice, db: asyncpg.Connection
) -> None:
    good = (await issue(client, clock, alice)).token
    key = await signing_key(db)
    assert await validate(client, forged(good, key.private_key, jti=str(uuid.uuid4()))) == (
        "DENY",
        "TOKEN_INVALID",
    )


async def test_an_unconfigured_algorithm_key_cannot_verify(
    client: Client, clock: FakeClock, alice: TotpDevice, db: asyncpg.Connection
) -> None:
    """The algorithm is pinned: an EdDSA signature under our kid is refused."""
    good = (await issue(client, clock, alice)).token
    ed = tokens.generate_key("EdDSA", now=clock.now())
    assert await validate(client, forged(good, ed.private_key, algorithm="EdDSA")) == (
        "DENY",
        "TOKEN_INVALID",
    )


# --- issuing rules ----------------------------------------------------------------------


async def test_issuing_for_an_unprotected_action_is_refused(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    await refused(
        issue(client, clock, alice, actions=(REFRESH,)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_ACTION_NOT_PROTECTED",
    )


async def test_the_method_must_be_allowed_for_action_mfa(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    await update_settings(
        client,
        ENV,
        action_methods=[types.METHOD_PASSKEY],
        passkey__rp_id="example.com",
        passkey__allowed_origins=["https://app.example.com"],
    )
    await refused(
        issue(client, clock, alice),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_METHOD_NOT_ALLOWED",
    )
    # Credential actions guard the factors themselves: any enabled method will do.
    linked = await issue(client, clock, alice, actions=(types.ACTION_CREDENTIAL_LINK,))
    assert linked.token


# --- per-action policies (DESIGN §3e) ----------------------------------------------------

PASSKEYS_CONFIGURED: dict[str, object] = {
    "passkey__rp_id": "example.com",
    "passkey__allowed_origins": ["https://app.example.com"],
}


async def set_policies(client: Client, *policies: types.ActionPolicy) -> None:
    await update_settings(client, ENV, action_policies=list(policies))


async def consumed(db: asyncpg.Connection, token: str) -> bool:
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    return bool(
        await db.fetchval(
            "SELECT consumed_at IS NOT NULL FROM action_tokens WHERE jti = $1", uuid.UUID(jti)
        )
    )


async def test_an_action_whose_policy_wants_passkeys_takes_no_code(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    bob, codes = await enroll_totp_with_codes(client, clock, ENV, "bob")
    await update_settings(client, ENV, **PASSKEYS_CONFIGURED)
    await set_policies(client, types.ActionPolicy(action=EXPORT, allowed_methods=[PASSKEY]))
    for actions in ((EXPORT,), (SIGN, EXPORT)):
        await refused(
            issue(client, clock, bob, user="bob", actions=actions),
            grpc.StatusCode.FAILED_PRECONDITION,
            "ERROR_REASON_METHOD_NOT_ALLOWED",
        )
    with_code = pb.IssueActionTokenRequest(
        environment_id=ENV,
        user_id="bob",
        challenge_id=await challenge(client, ENV, "bob", types.METHOD_RECOVERY_CODE),
        proof=types.Proof(recovery_code=codes[0]),
        actions=[EXPORT],
        single_use=True,
    )
    await refused(
        call(client.mfa_stub.IssueActionToken(with_code)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_METHOD_NOT_ALLOWED",
    )
    # Other actions follow the environment's methods: a code, and the recovery code too.
    assert (await issue(client, clock, bob, user="bob")).token
    with_code.actions[:] = [SIGN]
    with_code.challenge_id = await challenge(client, ENV, "bob", types.METHOD_RECOVERY_CODE)
    assert (await call(client.mfa_stub.IssueActionToken(with_code))).token


async def test_a_policy_tightened_after_issue_holds_for_the_token(
    client: Client, clock: FakeClock, alice: TotpDevice, db: asyncpg.Connection
) -> None:
    issued = await issue(client, clock, alice, payload_digest=DIGEST)
    await set_policies(client, types.ActionPolicy(action=SIGN, allowed_methods=[RECOVERY]))
    # The token's own bindings are checked first.
    assert await validate(client, issued.token, action=EXPORT, payload_digest=DIGEST) == (
        "DENY",
        "ACTION_MISMATCH",
    )
    assert await validate(client, issued.token) == ("DENY", "PAYLOAD_MISMATCH")
    for _ in range(2):
        assert await validate(client, issued.token, payload_digest=DIGEST) == (
            "DENY",
            "METHOD_NOT_ALLOWED",
        )
    assert not await consumed(db, issued.token)
    # Loosened again (the code's method listed), the unspent token works, once.
    await set_policies(client, types.ActionPolicy(action=SIGN, allowed_methods=[TOTP, RECOVERY]))
    assert await validate(client, issued.token, payload_digest=DIGEST) == ("ALLOW", "TOKEN_VALID")
    assert await consumed(db, issued.token)


async def test_a_policy_tightened_after_issue_holds_for_a_credential_change(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    unlink = await issue(client, clock, alice, actions=(types.ACTION_CREDENTIAL_UNLINK,))
    await set_policies(
        client,
        types.ActionPolicy(action=types.ACTION_CREDENTIAL_UNLINK, allowed_methods=[RECOVERY]),
    )
    delete = pb.DeleteDeviceRequest(
        environment_id=ENV, user_id="alice", device_id=alice.device_id, action_token=unlink.token
    )
    await refused(
        call(client.mfa_stub.DeleteDevice(delete)),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_STEP_UP_REQUIRED",
    )
    await set_policies(client)
    await call(client.mfa_stub.DeleteDevice(delete))  # the token was not spent


async def test_an_approval_required_after_issue_holds_for_the_token(
    client: Client, clock: FakeClock, alice: TotpDevice, db: asyncpg.Connection
) -> None:
    issued = await issue(client, clock, alice, single_use=False, actions=(SIGN, EXPORT))
    await set_policies(client, types.ActionPolicy(action=SIGN, require_approval=True))
    assert await validate(client, issued.token) == ("DENY", "APPROVAL_REQUIRED")
    assert await validate(client, issued.token, action=EXPORT) == ("ALLOW", "TOKEN_VALID")
    single = await issue(client, clock, alice, actions=(EXPORT,))
    await set_policies(client, types.ActionPolicy(action=EXPORT, require_approval=True))
    assert await validate(client, single.token, action=EXPORT) == ("DENY", "APPROVAL_REQUIRED")
    assert not await consumed(db, single.token)
    await set_policies(client, types.ActionPolicy(action=EXPORT))
    assert await validate(client, single.token, action=EXPORT) == ("ALLOW", "TOKEN_VALID")


async def test_a_policy_caps_the_token_lifetime(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    await set_policies(
        client,
        types.ActionPolicy(action=SIGN, max_token_ttl=duration_pb2.Duration(seconds=60)),
        types.ActionPolicy(action=EXPORT, max_token_ttl=duration_pb2.Duration(seconds=3600)),
    )
    for actions, single_use in (((SIGN,), True), ((EXPORT, SIGN), False)):
        issued = await issue(client, clock, alice, actions=actions, single_use=single_use)
        claims = jwt.decode(issued.token, options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 60
        assert issued.expires_at.ToDatetime(tzinfo=UTC) == clock.now() + timedelta(seconds=60)
        clock.advance(timedelta(seconds=59))
        assert await validate(client, issued.token) == ("ALLOW", "TOKEN_VALID")
        clock.advance(timedelta(seconds=1))
        assert await validate(client, issued.token) == ("DENY", "TOKEN_EXPIRED")
    # Under the environment's lifetime (5 min single use), a longer cap changes nothing.
    export = await issue(client, clock, alice, actions=(EXPORT,))
    claims = jwt.decode(export.token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 300


async def test_a_wrong_code_gets_no_token_and_counts_toward_lockout(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    await update_settings(client, ENV, lockout__max_failed_attempts=2)

    async def attempt(code: str) -> pb.IssueActionTokenResponse:
        challenge_id = await challenge(client, ENV, "alice")
        return await call(
            client.mfa_stub.IssueActionToken(
                pb.IssueActionTokenRequest(
                    environment_id=ENV,
                    user_id="alice",
                    challenge_id=challenge_id,
                    proof=types.Proof(totp_code=code),
                    actions=[SIGN],
                    single_use=True,
                )
            )
        )

    clock.advance(timedelta(seconds=30))
    right = alice.code(clock.now())
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    for _ in range(2):
        await refused(
            attempt(wrong), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_VERIFICATION_FAILED"
        )
    await refused(attempt(right), grpc.StatusCode.RESOURCE_EXHAUSTED, "ERROR_REASON_LOCKED_OUT")


async def test_a_code_mints_one_token(
    client: Client, clock: FakeClock, alice: TotpDevice, db: asyncpg.Connection
) -> None:
    clock.advance(timedelta(seconds=30))
    code = alice.code(clock.now())
    for expected_ok in (True, False):
        request = pb.IssueActionTokenRequest(
            environment_id=ENV,
            user_id="alice",
            challenge_id=await challenge(client, ENV, "alice"),
            proof=types.Proof(totp_code=code),
            actions=[SIGN],
            single_use=True,
        )
        if expected_ok:
            await call(client.mfa_stub.IssueActionToken(request))
        else:
            await refused(
                call(client.mfa_stub.IssueActionToken(request)),
                grpc.StatusCode.PERMISSION_DENIED,
                "ERROR_REASON_VERIFICATION_FAILED",
            )
            assert await last_audit_type(db, "alice") == "CODE_REUSED"  # a reuse, not a typo


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("actions", {"actions": []}),
        ("actions[0]", {"actions": [types.ACTION_UNSPECIFIED]}),
        ("actions", {"actions": [SIGN, SIGN]}),
        ("payload_digest", {"payload_digest": b"x" * 31}),
        ("challenge_id", {"challenge_id": "nope"}),
    ],
)
async def test_issue_input_errors_name_the_field(
    client: Client, alice: TotpDevice, field: str, changes: dict[str, Any]
) -> None:
    request = pb.IssueActionTokenRequest(
        environment_id=ENV,
        user_id="alice",
        challenge_id=await challenge(client, ENV, "alice"),
        proof=types.Proof(totp_code="123456"),
        actions=[SIGN],
    )
    for name, value in changes.items():
        if isinstance(value, list):
            del getattr(request, name)[:]
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    error = await refused(
        call(client.mfa_stub.IssueActionToken(request)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == [field]


@pytest.mark.parametrize(
    ("field", "request_fields"),
    [
        ("action", {"action": types.ACTION_UNSPECIFIED}),
        ("payload_digest", {"payload_digest": b"short"}),
        ("user_id", {"user_id": ""}),
        ("token", {"token": "x" * 9000}),
    ],
)
async def test_validate_input_errors_name_the_field(
    client: Client, field: str, request_fields: dict[str, Any]
) -> None:
    request = at_pb.ValidateActionTokenRequest(environment_id=ENV, user_id="alice", action=SIGN)
    for name, value in request_fields.items():
        setattr(request, name, value)
    error = await refused(
        call(client.action_tokens_stub.ValidateActionToken(request)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in error.field_violations] == [field]


# --- concurrency and retries ------------------------------------------------------------


async def test_one_single_use_token_is_allowed_exactly_once_under_load(
    app: Application, client: Client, clock: FakeClock, alice: TotpDevice, db: asyncpg.Connection
) -> None:
    issued = await issue(client, clock, alice)
    # Channels with equal options share one connection unless each has its own
    # subchannel pool: five connections, each its own HTTP/2 session at the server.
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    clients = [
        Client(grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options))
        for _ in range(5)
    ]
    try:
        results = await asyncio.gather(
            *(validate(clients[i % 5], issued.token) for i in range(100))
        )
    finally:
        for c in clients:
            await c.close()
    assert results.count(("ALLOW", "TOKEN_VALID")) == 1
    assert results.count(("DENY", "TOKEN_ALREADY_USED")) == 99
    assert (
        await db.fetchval("SELECT count(*) FROM action_tokens WHERE consumed_at IS NOT NULL") == 1
    )
    # The calls came over five connections (the audit's caller is the peer address).
    peers = await db.fetchval(
        "SELECT count(DISTINCT caller) FROM audit_events WHERE type = 'TOKEN_VALIDATED'"
    )
    assert peers == 5


async def test_concurrent_validations_each_get_their_own_decision(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    """Validations that arrive together are decided together (one statement per batch):
    every request still gets the decision for its own token and its own claims."""
    twice = await issue(client, clock, alice)
    for_bob = await issue(client, clock, alice)
    for_sign = await issue(client, clock, alice)
    digested = await issue(client, clock, alice, payload_digest=DIGEST)
    forged = await issue(client, clock, alice)
    multi = await issue(client, clock, alice, single_use=False)
    keyed = await issue(client, clock, alice)
    requests = {
        "twice-1": validate(client, twice.token),
        "twice-2": validate(client, twice.token),
        "bob": validate(client, for_bob.token, user="bob"),
        "export": validate(client, for_sign.token, action=EXPORT),
        "digest": validate(client, digested.token, payload_digest=OTHER_DIGEST),
        "forged": validate(
            client, forged.token[:-2] + ("AA" if forged.token[-2:] != "AA" else "BB")
        ),
        "multi-1": validate(client, multi.token),
        "multi-2": validate(client, multi.token),
        "keyed-1": validate(client, keyed.token, idempotency_key="k"),
        "keyed-2": validate(client, keyed.token, idempotency_key="k"),
    }
    got = dict(zip(requests, await asyncio.gather(*requests.values()), strict=True))
    assert sorted([got.pop("twice-1"), got.pop("twice-2")]) == [
        ("ALLOW", "TOKEN_VALID"),
        ("DENY", "TOKEN_ALREADY_USED"),
    ]
    assert got == {
        "bob": ("DENY", "USER_MISMATCH"),
        "export": ("DENY", "ACTION_MISMATCH"),
        "digest": ("DENY", "PAYLOAD_MISMATCH"),
        "forged": ("DENY", "TOKEN_INVALID"),
        "multi-1": ("ALLOW", "TOKEN_VALID"),
        "multi-2": ("ALLOW", "TOKEN_VALID"),
        "keyed-1": ("ALLOW", "TOKEN_VALID"),
        "keyed-2": ("ALLOW", "TOKEN_VALID"),
    }
    # The refused tokens were not consumed by their neighbours' success.
    assert await validate(client, for_bob.token) == ("ALLOW", "TOKEN_VALID")
    assert await validate(client, digested.token, payload_digest=DIGEST) == (
        "ALLOW",
        "TOKEN_VALID",
    )
    assert await validate(client, forged.token) == ("ALLOW", "TOKEN_VALID")


async def test_idempotent_retry_returns_the_first_decision(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    issued = await issue(client, clock, alice, payload_digest=DIGEST)
    first = await validate(client, issued.token, payload_digest=DIGEST, idempotency_key="sig-1")
    retry = await validate(client, issued.token, payload_digest=DIGEST, idempotency_key="sig-1")
    assert first == retry == ("ALLOW", "TOKEN_VALID")
    other = await validate(client, issued.token, payload_digest=DIGEST, idempotency_key="sig-2")
    assert other == ("DENY", "TOKEN_ALREADY_USED")
    misuse = await refused(
        validate(client, issued.token, payload_digest=OTHER_DIGEST, idempotency_key="sig-1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_ARGUMENT",
    )
    assert [v.field for v in misuse.field_violations] == ["idempotency_key"]


async def test_concurrent_retries_with_one_key_agree(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    issued = await issue(client, clock, alice)
    results = await asyncio.gather(
        *(validate(client, issued.token, idempotency_key="same") for _ in range(10))
    )
    assert set(results) == {("ALLOW", "TOKEN_VALID")}


# --- keys ----------------------------------------------------------------------------


async def test_rotation_keeps_old_tokens_valid_and_jwks_lists_both(
    app: Application, client: Client, clock: FakeClock, alice: TotpDevice, database_url: str
) -> None:
    before = await issue(client, clock, alice, single_use=False)
    new_kid = await rotate_signing_key(
        database_url=database_url, key_ring=TEST_KEY_RING, algorithm="ES256", clock=clock
    )
    clock.advance(timedelta(seconds=61))  # the replica's key cache refreshes
    after = await issue(client, clock, alice, single_use=False)
    assert jwt.get_unverified_header(after.token)["kid"] == new_kid
    assert jwt.get_unverified_header(before.token)["kid"] != new_kid
    assert await validate(client, before.token) == ("ALLOW", "TOKEN_VALID")
    assert await validate(client, after.token) == ("ALLOW", "TOKEN_VALID")

    jwks = json.loads(
        (await call(client.action_tokens_stub.GetJwks(at_pb.GetJwksRequest()))).jwks_json
    )
    kids = {k["kid"] for k in jwks["keys"]}
    assert kids == {new_kid, jwt.get_unverified_header(before.token)["kid"]}
    for jwk in jwks["keys"]:
        assert "d" not in jwk  # never the private part
        assert (jwk["alg"], jwk["kty"], jwk["use"]) == ("ES256", "EC", "sig")
    # Offline check with plain pyjwt, the way another service would do it.
    keyset = jwt.PyJWKSet.from_dict(jwks)
    for token in (before.token, after.token):
        kid = jwt.get_unverified_header(token)["kid"]
        claims = jwt.decode(
            token,
            keyset[kid].key,
            algorithms=["ES256"],
            audience="mfa-action",
            issuer="mfa-service",
            options={"verify_exp": False, "verify_iat": False},
        )
        assert claims["sub"] == "alice"


async def test_a_retired_key_leaves_the_jwks_after_its_tokens_expired(
    client: Client, clock: FakeClock, alice: TotpDevice, database_url: str
) -> None:
    old_kid = json.loads(
        (await call(client.action_tokens_stub.GetJwks(at_pb.GetJwksRequest()))).jwks_json
    )["keys"][0]["kid"]
    await rotate_signing_key(
        database_url=database_url, key_ring=TEST_KEY_RING, algorithm="ES256", clock=clock
    )
    clock.advance(timedelta(hours=1, minutes=6))
    jwks = json.loads(
        (await call(client.action_tokens_stub.GetJwks(at_pb.GetJwksRequest()))).jwks_json
    )
    assert old_kid not in {k["kid"] for k in jwks["keys"]}
    assert len(jwks["keys"]) == 1


async def test_keys_rotate_command(
    client: Client, clock: FakeClock, alice: TotpDevice, database_url: str
) -> None:
    before = await issue(client, clock, alice, single_use=False)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MFA_ENCRYPTION_KEYS": ",".join(
            f"{kid}:{base64.b64encode(key).decode()}" for kid, key in TEST_KEY_RING.keys
        ),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mfa_service", "keys", "rotate",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert "new signing key" in stdout.decode()
    for kid, key in TEST_KEY_RING.keys:
        assert base64.b64encode(key).decode() not in stdout.decode() + stderr.decode()
        assert kid
    clock.advance(timedelta(seconds=61))
    assert await validate(client, before.token) == ("ALLOW", "TOKEN_VALID")
    jwks = json.loads(
        (await call(client.action_tokens_stub.GetJwks(at_pb.GetJwksRequest()))).jwks_json
    )
    assert len(jwks["keys"]) == 2


async def test_a_retired_key_verifies_until_the_longest_lived_token_expires(
    client: Client, clock: FakeClock, alice: TotpDevice, database_url: str
) -> None:
    """The old key stays in the JWKS for as long as the settings let a token live."""
    longest = max(SINGLE_USE_TTL_RANGE[1], MULTI_USE_TTL_RANGE[1])
    settings = types.Settings(environment_id=ENV)
    settings.multi_use_token_ttl.FromTimedelta(longest)
    await client.admin.update_settings(settings, ["multi_use_token_ttl"])
    issued = await issue(client, clock, alice, single_use=False)
    old_kid = jwt.get_unverified_header(issued.token)["kid"]
    new_kid = await rotate_signing_key(
        database_url=database_url, key_ring=TEST_KEY_RING, algorithm="ES256", clock=clock
    )

    clock.advance(longest - timedelta(seconds=1))  # the token's last second
    jwks = await get_jwks(client)
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    assert verified_offline(issued.token, jwks, clock)["sub"] == "alice"
    assert await validate(client, issued.token) == ("ALLOW", "TOKEN_VALID")

    clock.advance(timedelta(seconds=1))
    assert await validate(client, issued.token) == ("DENY", "TOKEN_EXPIRED")
    clock.advance(RETIRED_KEY_KEPT - longest)  # and the margin
    assert {k["kid"] for k in (await get_jwks(client))["keys"]} == {new_kid}


async def test_a_rotation_reaches_a_running_server_at_once(
    client: Client, clock: FakeClock, alice: TotpDevice, database_url: str
) -> None:
    """``keys rotate`` tells the replicas (NOTIFY): no waiting for their refresh."""
    old_kids = {k["kid"] for k in (await get_jwks(client))["keys"]}
    new_kid = await rotate_signing_key(  # what `mfa-service keys rotate` runs
        database_url=database_url, key_ring=TEST_KEY_RING, algorithm="ES256", clock=clock
    )

    async def kids_with_the_new_one() -> set[str]:
        kids = {k["kid"] for k in (await get_jwks(client))["keys"]}
        return kids if new_kid in kids else set()

    # The clock stands still: only the notification can do it.
    kids = await eventually(kids_with_the_new_one, what="the rotated key in the JWKS")
    assert kids == old_kids | {new_kid}
    issued = await issue(client, clock, alice)  # 30 s later, within the refresh interval
    assert jwt.get_unverified_header(issued.token)["kid"] == new_kid


async def test_eddsa_tokens(database_url: str, clock: FakeClock) -> None:
    async with serving(database_url, clock, "EdDSA") as client:
        await client.admin.create_environment(ENV)
        await update_settings(client, ENV, protected_actions=[SIGN])
        device = await enroll_totp(client, clock, ENV, "alice")
        issued = await issue(client, clock, device, payload_digest=DIGEST)
        header = jwt.get_unverified_header(issued.token)
        assert (header["alg"], header["typ"]) == ("EdDSA", "mfa-action+jwt")
        jwks = await get_jwks(client)
        [jwk] = jwks["keys"]
        assert (jwk["kid"], jwk["alg"], jwk["kty"], jwk["crv"], jwk["use"]) == (
            header["kid"],
            "EdDSA",
            "OKP",
            "Ed25519",
            "sig",
        )
        assert "d" not in jwk
        claims = verified_offline(issued.token, jwks, clock)
        assert (claims["sub"], claims["act"]) == ("alice", ["WAAS_SIGN"])
        # An ES256 token (here signed by an outsider) names an algorithm no key has.
        es = tokens.generate_key("ES256", now=clock.now())
        assert await validate(
            client, forged(issued.token, es.private_key), payload_digest=DIGEST
        ) == ("DENY", "TOKEN_INVALID")
        assert await validate(client, issued.token, payload_digest=DIGEST) == (
            "ALLOW",
            "TOKEN_VALID",
        )
        assert await validate(client, issued.token, payload_digest=DIGEST) == (
            "DENY",
            "TOKEN_ALREADY_USED",
        )


async def test_changing_the_algorithm_keeps_live_tokens_valid(
    database_url: str, clock: FakeClock
) -> None:
    """A restart with MFA_TOKEN_ALGORITHM changed: the tokens signed before still pass,
    and the old key stays in the JWKS next to the new one."""
    async with serving(database_url, clock, "ES256") as client:
        await client.admin.create_environment(ENV)
        await update_settings(client, ENV, protected_actions=[SIGN])
        device = await enroll_totp(client, clock, ENV, "alice")
        single = await issue(client, clock, device)
        multi = await issue(client, clock, device, single_use=False)
    es_kid = jwt.get_unverified_header(single.token)["kid"]

    async with serving(database_url, clock, "EdDSA") as client:
        assert await validate(client, single.token) == ("ALLOW", "TOKEN_VALID")
        assert await validate(client, multi.token) == ("ALLOW", "TOKEN_VALID")
        new = await issue(client, clock, device)
        header = jwt.get_unverified_header(new.token)
        assert header["alg"] == "EdDSA"
        jwks = await get_jwks(client)
        assert {(k["kid"], k["alg"]) for k in jwks["keys"]} == {
            (es_kid, "ES256"),
            (header["kid"], "EdDSA"),
        }
        for token in (multi.token, new.token):
            assert verified_offline(token, jwks, clock)["sub"] == "alice"
        assert await validate(client, new.token) == ("ALLOW", "TOKEN_VALID")


async def test_servers_configured_with_two_algorithms_share_the_active_key(
    database_url: str, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """During a rolling change of algorithm, old and new servers sign with the key the
    last one to start made; they do not take turns making keys."""
    async with contextlib.AsyncExitStack() as stack:
        old = await stack.enter_async_context(serving(database_url, clock, "ES256"))
        await old.admin.create_environment(ENV)
        await update_settings(old, ENV, protected_actions=[SIGN])
        device = await enroll_totp(old, clock, ENV, "alice")
        new = await stack.enter_async_context(serving(database_url, clock, "EdDSA"))

        async def both_keys() -> bool:
            return len((await get_jwks(old))["keys"]) == 2

        # The old server learns of the new key (NOTIFY).
        await eventually(both_keys, what="the old server knowing the new key")
        issued = [await issue(server, clock, device) for server in (old, new, old, new)]
        assert {jwt.get_unverified_header(t.token)["alg"] for t in issued} == {"EdDSA"}
        assert await db.fetchval("SELECT count(*) FROM signing_keys") == 2
        for t, server in zip(issued, (new, old, new, old), strict=True):
            assert await validate(server, t.token) == ("ALLOW", "TOKEN_VALID")


async def test_signing_keys_are_sealed_at_rest(db: asyncpg.Connection, app: Application) -> None:
    row = await db.fetchrow("SELECT kid, private_key FROM signing_keys")
    assert row is not None
    with pytest.raises(ValueError):
        serialization.load_der_private_key(row["private_key"], password=None)
    assert TEST_KEY_RING.kid_of(row["private_key"]) == TEST_KEY_RING.active_kid


# --- step-up for credential changes ------------------------------------------------------


async def test_a_second_device_needs_a_credential_link_token(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    await update_settings(client, ENV, totp__max_devices=2)

    async def enroll(token: str) -> pb.EnrollResponse:
        return await call(
            client.mfa_stub.Enroll(
                pb.EnrollRequest(
                    environment_id=ENV,
                    user_id="alice",
                    method=types.METHOD_TOTP,
                    action_token=token,
                )
            )
        )

    await refused(enroll(""), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED")
    sign = await issue(client, clock, alice)
    await refused(
        enroll(sign.token), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED"
    )
    assert await validate(client, sign.token) == ("ALLOW", "TOKEN_VALID")  # not consumed
    link = await issue(client, clock, alice, actions=(types.ACTION_CREDENTIAL_LINK,))
    started = await enroll(link.token)
    assert started.totp.secret
    await refused(
        enroll(link.token), grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_STEP_UP_REQUIRED"
    )


async def test_a_remembered_allow_never_outlives_its_token(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    """A captured (token, key) pair replayed later must not get ALLOW again."""
    expiring = await issue(client, clock, alice)
    assert await validate(client, expiring.token, idempotency_key="k-exp") == (
        "ALLOW",
        "TOKEN_VALID",
    )
    clock.advance(timedelta(minutes=5))
    assert await validate(client, expiring.token, idempotency_key="k-exp") == (
        "DENY",
        "TOKEN_EXPIRED",
    )

    revoked = await issue(client, clock, alice)
    assert await validate(client, revoked.token, idempotency_key="k-rev") == (
        "ALLOW",
        "TOKEN_VALID",
    )
    await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id="alice")
        )
    )
    assert await validate(client, revoked.token, idempotency_key="k-rev") == (
        "DENY",
        "TOKEN_REVOKED",
    )


async def test_an_idempotency_key_is_remembered_for_a_short_window(
    client: Client, clock: FakeClock, alice: TotpDevice
) -> None:
    multi = await issue(client, clock, alice, single_use=False)
    assert await validate(client, multi.token, idempotency_key="w") == ("ALLOW", "TOKEN_VALID")
    clock.advance(timedelta(minutes=5, seconds=1))
    # Past the window the key starts afresh: another request may use it.
    assert await validate(client, multi.token, action=EXPORT, idempotency_key="w") == (
        "DENY",
        "ACTION_MISMATCH",
    )
