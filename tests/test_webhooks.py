"""Webhooks (DESIGN §3f): CreateWebhook, ListWebhooks, DeleteWebhook, and deliveries to
a real HTTP receiver, signed as Standard Webhooks says, at least once, in order, retried
with backoff while the receiver is down. The clock of the server is the only fake: it
moves retries along (the backoff and the horizon are read from it)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import jwt
import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from flows import call, enroll_totp
from helpers import LOOPBACK_WEBHOOKS, TEST_KEY_RING, FakeClock, eventually, refused
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa_client import Client
from mfa_service.domain import webhooks as domain
from mfa_service.domain.audit import AuditEventType
from mfa_service.domain.webhooks import GiveUp, Retry, RetryPolicy
from mfa_service.errors import InvalidArgument
from mfa_service.services.webhooks import WebhookOptions
from receiver import Receiver

ENV = "env-hooks"
pytestmark = pytest.mark.environments(ENV)
INVALID = "ERROR_REASON_INVALID_ARGUMENT"
T = admin_pb.AuditEventType
COMPLETED = T.AUDIT_EVENT_TYPE_ENROLLMENT_COMPLETED
RESET = T.AUDIT_EVENT_TYPE_USER_RESET
# Past the longest backoff (10 min), so a retry is due; far short of the horizon.
PAST_BACKOFF = timedelta(minutes=11)


@pytest.fixture
def clock() -> FakeClock:
    """At the real time: receivers check a delivery's timestamp against their clock."""
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def webhook_options() -> WebhookOptions:
    return LOOPBACK_WEBHOOKS


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as started:
        yield started


async def create_webhook(
    client: Client,
    url: str,
    types: Sequence[admin_pb.AuditEventType.ValueType] = (COMPLETED, RESET),
    **fields: object,
) -> admin_pb.CreateWebhookResponse:
    request = admin_pb.CreateWebhookRequest(
        environment_id=ENV,
        url=url,
        event_types=list(types),
        **fields,  # type: ignore[arg-type]
    )
    return await call(client.admin.stub.CreateWebhook(request))


async def list_webhooks(client: Client) -> list[admin_pb.Webhook]:
    response = await call(
        client.admin.stub.ListWebhooks(admin_pb.ListWebhooksRequest(environment_id=ENV))
    )
    return list(response.webhooks)


async def reset(client: Client, user: str) -> None:
    """A USER_RESET event for ``user`` (one that users are told of)."""
    await call(
        client.admin.stub.ResetUserMfa(
            admin_pb.ResetUserMfaRequest(environment_id=ENV, user_id=user)
        )
    )


async def committed_ids(db: asyncpg.Connection, types: Sequence[str]) -> list[str]:
    """The ids of the environment's events of ``types``, in commit order."""
    rows = await db.fetch(
        "SELECT event_id::text FROM audit_events WHERE environment_id = $1 AND type = ANY($2) "
        "ORDER BY xid, id",
        ENV,
        list(types),
    )
    return [row["event_id"] for row in rows]


async def committed_ids_of(db: asyncpg.Connection, user: str) -> list[str]:
    """The ids of ``user``'s events in the environment, in commit order."""
    rows = await db.fetch(
        "SELECT event_id::text FROM audit_events WHERE environment_id = $1 AND user_id = $2 "
        "ORDER BY xid, id",
        ENV,
        user,
    )
    return [row["event_id"] for row in rows]


# --- signatures --------------------------------------------------------------------------


def test_the_signature_is_the_one_the_standard_webhooks_library_computes() -> None:
    secret = domain.new_secret()
    body = b'{"type":"mfa.user_reset","data":{"user_id":"\xc3\xa9"}}'
    at = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    ours = domain.signature(
        secret=secret, message_id="msg_1", timestamp=int(at.timestamp()), body=body
    )
    theirs = StandardWebhook(domain.secret_text(secret)).sign("msg_1", at, body)
    assert ours == theirs
    other = StandardWebhook(domain.secret_text(domain.new_secret())).sign("msg_1", at, body)
    assert ours != other


async def test_a_delivery_verifies_with_its_secret_and_not_with_another(
    client: Client, clock: FakeClock, receiver: Receiver
) -> None:
    created = await create_webhook(client, receiver.url())
    secret = created.signing_secret
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    await enroll_totp(client, clock, ENV, "alice")

    (delivery,) = await eventually(lambda: receiver.delivered(), what="the enrollment delivered")
    assert delivery.headers["content-type"] == "application/json"
    payload = StandardWebhook(secret).verify(delivery.body, delivery.headers)
    assert payload["type"] == "mfa.enrollment_completed"
    assert payload["data"]["user_id"] == "alice"
    assert payload["data"]["notify_user"] is True
    assert payload["data"]["event_id"] == delivery.message_id
    other = domain.secret_text(domain.new_secret())
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        StandardWebhook(other).verify(delivery.body, delivery.headers)
    tampered = delivery.body.replace(b"alice", b"mallory")
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        StandardWebhook(secret).verify(tampered, delivery.headers)


async def test_a_caep_webhook_pushes_credential_changes_as_security_event_tokens(
    client: Client, clock: FakeClock, receiver: Receiver
) -> None:
    """WEBHOOK_FORMAT_CAEP: each credential change is an OpenID CAEP credential-change SET
    (RFC 8417) signed with the token keys, pushed as RFC 8935 says; it verifies with plain
    pyjwt against GetJwks. A reset that removed nothing changes no credential: nothing is
    sent for it, and the events after it still go."""
    await create_webhook(
        client, receiver.url(), (COMPLETED, RESET), format=admin_pb.WEBHOOK_FORMAT_CAEP
    )
    await enroll_totp(client, clock, ENV, "carl")
    await reset(client, "nobody")  # no device: no credential changed
    await reset(client, "carl")
    await eventually(lambda: len(receiver.delivered()) >= 2, what="two SETs delivered")
    deliveries = receiver.delivered()
    keys = jwt.PyJWKSet.from_dict(await client.action_tokens.jwks())
    changes = []
    for delivery in deliveries:
        assert delivery.headers["content-type"] == "application/secevent+jwt"
        token = delivery.body.decode()
        header = jwt.get_unverified_header(token)
        assert header["typ"] == "secevent+jwt"
        claims = jwt.decode(
            token,
            keys[header["kid"]].key,
            algorithms=[header["alg"]],
            audience=receiver.url(),
            issuer="mfa-service",
        )
        assert claims["sub_id"]["user"]["sub"] == "carl"
        [(kind, change)] = claims["events"].items()
        assert kind == "https://schemas.openid.net/secevent/caep/event-type/credential-change"
        changes.append((change["credential_type"], change["change_type"]))
    assert changes == [("app", "create"), ("mfa-all", "revoke")]
    forged = deliveries[0].body.decode()[:-4] + "AAAA"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            forged,
            keys[jwt.get_unverified_header(forged)["kid"]].key,
            algorithms=["ES256", "EdDSA", "RS256"],
            audience=receiver.url(),
        )


async def test_the_secret_is_sealed_at_rest_and_never_listed(
    client: Client, db: asyncpg.Connection, receiver: Receiver
) -> None:
    created = await create_webhook(client, receiver.url())
    secret = base64.b64decode(created.signing_secret.removeprefix("whsec_"))
    sealed = await db.fetchval("SELECT secret_sealed FROM webhooks")
    assert secret not in sealed
    context = f"webhook\x00{ENV}\x00{created.webhook.webhook_id}".encode()
    assert TEST_KEY_RING.decrypt(sealed, context=context) == secret
    (listed,) = await list_webhooks(client)
    assert created.signing_secret not in str(listed)
    assert listed == created.webhook


# --- what may be created -----------------------------------------------------------------

BAD_URLS = [
    ("", "required"),
    ("http://example.com/hook", "must be https"),  # even in development mode
    ("http://10.0.0.1/hook", "must be https"),
    ("http://127.evil.example/hook", "must be https"),
    ("ftp://example.com/hook", "must be https"),
    ("https://user:password@example.com/hook", "credentials"),
    ("https://token@example.com/hook", "credentials"),
    ("https://example.com/hook#part", "fragment"),
    ("https:///hook", "needs a host"),
    ("https://example.com:99999/hook", "not a valid URL"),
    ("https://exämple.com/hook", "printable ASCII"),
    ("https://example.com/" + "a" * (domain.MAX_URL - 19), "at most 2048"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
async def test_a_bad_url_is_refused_naming_url(client: Client, url: str, problem: str) -> None:
    error = await refused(create_webhook(client, url), grpc.StatusCode.INVALID_ARGUMENT, INVALID)
    assert error.field_violations[0].field == "url"
    assert problem in error.field_violations[0].description
    assert await list_webhooks(client) == []


def test_http_to_loopback_only_in_development_mode() -> None:
    for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]:9/hook"):
        assert domain.check_url(url, allow_loopback_http=True) == url
        with pytest.raises(InvalidArgument, match="must be https"):
            domain.check_url(url, allow_loopback_http=False)
    at_cap = "https://example.com/" + "a" * (domain.MAX_URL - 20)
    assert domain.check_url(at_cap, allow_loopback_http=False) == at_cap


@pytest.mark.parametrize(
    ("types", "fields", "field"),
    [
        ([], {}, "event_types"),
        ([T.AUDIT_EVENT_TYPE_UNSPECIFIED], {}, "event_types[0]"),
        ([COMPLETED, 999], {}, "event_types[1]"),
        ([COMPLETED, RESET, COMPLETED], {}, "event_types[2]"),
        ([COMPLETED], {"format": 7}, "format"),
        # CAEP has a Security Event Token for credential changes only.
        (
            [COMPLETED, T.AUDIT_EVENT_TYPE_TOKEN_VALIDATED],
            {"format": admin_pb.WEBHOOK_FORMAT_CAEP},
            "event_types[1]",
        ),
    ],
)
async def test_bad_event_types_or_format_are_refused_naming_the_field(
    client: Client,
    receiver: Receiver,
    types: list[admin_pb.AuditEventType.ValueType],
    fields: dict[str, object],
    field: str,
) -> None:
    error = await refused(
        create_webhook(client, receiver.url(), types, **fields),
        grpc.StatusCode.INVALID_ARGUMENT,
        INVALID,
    )
    assert [v.field for v in error.field_violations] == [field]


async def test_an_environment_takes_at_most_ten_webhooks(
    client: Client, receiver: Receiver
) -> None:
    made = [await create_webhook(client, receiver.url(f"/{i}")) for i in range(10)]
    error = await refused(
        create_webhook(client, receiver.url("/11")), grpc.StatusCode.INVALID_ARGUMENT, INVALID
    )
    assert error.field_violations[0].field == "environment_id"
    assert len(await list_webhooks(client)) == 10
    await call(
        client.admin.stub.DeleteWebhook(
            admin_pb.DeleteWebhookRequest(environment_id=ENV, webhook_id=made[0].webhook.webhook_id)
        )
    )
    await create_webhook(client, receiver.url("/11"))


async def test_webhooks_of_an_environment_never_created_are_refused(
    client: Client, receiver: Receiver
) -> None:
    other = "env-nobody-made"
    for rpc in (
        client.admin.stub.CreateWebhook(
            admin_pb.CreateWebhookRequest(
                environment_id=other, url=receiver.url(), event_types=[RESET]
            )
        ),
        client.admin.stub.ListWebhooks(admin_pb.ListWebhooksRequest(environment_id=other)),
    ):
        await refused(call(rpc), grpc.StatusCode.NOT_FOUND, "ERROR_REASON_ENVIRONMENT_NOT_FOUND")


# --- deliveries ----------------------------------------------------------------------------


async def test_a_change_that_rolls_back_delivers_nothing(
    client: Client, db: asyncpg.Connection, receiver: Receiver
) -> None:
    """The event of a reset that fails after writing it goes with the rollback; the
    reset after it is delivered, and nothing before it."""
    await create_webhook(client, receiver.url())
    await db.execute(
        "CREATE FUNCTION test_fail_ghost() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'rolled back by the test'; END $$"
    )
    await db.execute(
        "CREATE TRIGGER test_fail_ghost AFTER INSERT ON audit_events FOR EACH ROW "
        "WHEN (NEW.user_id = 'ghost') EXECUTE FUNCTION test_fail_ghost()"
    )
    try:
        await refused(reset(client, "ghost"), grpc.StatusCode.INTERNAL, "ERROR_REASON_INTERNAL")
    finally:
        await db.execute("DROP TRIGGER test_fail_ghost ON audit_events")
        await db.execute("DROP FUNCTION test_fail_ghost()")
    await reset(client, "real")
    await eventually(lambda: receiver.delivered(), what="the committed reset delivered")
    assert [r.user_id for r in receiver.received] == ["real"]


async def test_a_receiver_down_then_failing_gets_every_event_in_order_once_it_is_back(
    client: Client, clock: FakeClock, db: asyncpg.Connection
) -> None:
    down = Receiver()  # not listening: connection refused
    await create_webhook(client, down.url())
    users = ["ann", "ben", "cat"]
    for round_ in range(3):
        for user in users:
            await (enroll_totp(client, clock, ENV, user) if round_ == 0 else reset(client, user))

    async def refused_recorded() -> bool:
        (hook,) = await list_webhooks(client)
        return "connection failed" in hook.last_error and hook.attempts >= 1

    await eventually(refused_recorded, what="the refused connection in ListWebhooks")
    down.status = 500
    await down.start()
    try:

        async def answered_500() -> bool:
            clock.advance(PAST_BACKOFF)
            (hook,) = await list_webhooks(client)
            return hook.last_status_code == 500 and hook.attempts >= 2

        await eventually(answered_500, what="a 500 recorded after a retry")
        assert down.delivered() == []
        down.status = 200

        expected = await committed_ids(db, ["ENROLLMENT_COMPLETED", "USER_RESET"])
        assert len(expected) == 9

        def all_delivered() -> bool:
            clock.advance(PAST_BACKOFF)
            return len(down.delivered()) >= len(expected)

        await eventually(all_delivered, what="every event once the receiver is back")
    finally:
        await down.stop()
    delivered = [r.message_id for r in down.delivered()]
    assert sorted(delivered) == sorted(expected)  # every event, each once
    for user in users:  # each user's in commit order (users' side by side)
        assert [r.message_id for r in down.delivered() if r.user_id == user] == [
            i for i in expected if i in await committed_ids_of(db, user)
        ]
        mine = [r.payload["type"] for r in down.delivered() if r.user_id == user]
        assert mine == ["mfa.enrollment_completed", "mfa.user_reset", "mfa.user_reset"]
    (hook,) = await list_webhooks(client)
    assert (hook.attempts, hook.last_status_code, hook.last_error) == (0, 200, "")
    assert hook.dropped_events == 0


async def test_events_of_other_types_move_the_cursor_unsent_and_an_idle_webhook_is_not_written(
    client: Client, clock: FakeClock, db: asyncpg.Connection, receiver: Receiver
) -> None:
    """A webhook reads every event after its cursor and moves past those of types it
    does not take, sending nothing (so none is ever scanned twice); with nothing after
    its cursor it is not even claimed: its row stays as it is."""
    await create_webhook(client, receiver.url(), types=[RESET])
    await enroll_totp(client, clock, ENV, "erin")  # enrollment events only

    async def moved_past_them() -> bool:
        """No event of the environment after the webhook's cursor."""
        after: bool = await db.fetchval(
            "SELECT EXISTS (SELECT FROM audit_events e, webhooks w "
            "WHERE e.environment_id = $1 AND (e.xid, e.id) > (w.cursor_xid, w.cursor_id))",
            ENV,
        )
        return not after

    await eventually(moved_past_them, what="the cursor past the enrollment's events")
    assert receiver.received == []
    (hook,) = await list_webhooks(client)
    assert not hook.HasField("last_attempt_time") and hook.last_status_code == 0
    version = await db.fetchval("SELECT xmin::text FROM webhooks")
    await asyncio.sleep(0.5)  # ten looks of the dispatcher (every 50 ms here)
    assert await db.fetchval("SELECT xmin::text FROM webhooks") == version
    await reset(client, "erin")
    (delivered,) = await eventually(lambda: receiver.delivered(), what="the reset delivered")
    assert delivered.payload["type"] == "mfa.user_reset"


async def test_one_users_failing_event_holds_back_only_what_follows_it_and_nothing_is_skipped(
    client: Client, clock: FakeClock, db: asyncpg.Connection, receiver: Receiver
) -> None:
    """Users' events go side by side, each user's in order. While the receiver refuses
    one user's events, that user's later events are not sent; the cursor stops before the
    refused one, so what other users got after it in commit order is sent again on the
    retry, under the same webhook-id (as after a crash mid-batch); nothing is skipped."""
    await create_webhook(client, receiver.url())
    receiver.failing_users = {"bob"}
    for user in ["ann", "bob", "cat", "bob", "ann", "cat"]:
        await reset(client, user)
    expected = await committed_ids(db, ["USER_RESET"])
    bobs = await committed_ids_of(db, "bob")

    async def refused_once() -> bool:
        (hook,) = await list_webhooks(client)
        return hook.last_status_code == 500 and hook.attempts >= 1

    await eventually(refused_once, what="bob's first event refused")
    # Bob's second event was never sent: his first one holds it back.
    assert {r.message_id for r in receiver.received if r.user_id == "bob"} == {bobs[0]}
    receiver.failing_users = set()

    def all_delivered() -> bool:
        clock.advance(PAST_BACKOFF)
        return {r.message_id for r in receiver.delivered()} == set(expected)

    await eventually(all_delivered, what="every event once bob's are taken")
    for user in ["ann", "bob", "cat"]:  # each user's first deliveries in commit order
        mine = [r.message_id for r in receiver.delivered() if r.user_id == user]
        assert list(dict.fromkeys(mine)) == await committed_ids_of(db, user)
    # A repeat is an event delivered before, sent again under the same webhook-id: a
    # receiver that drops the ids it has seen (as Standard Webhooks says) gets each once.
    assert all(r.message_id == r.payload["data"]["event_id"] for r in receiver.received)
    (hook,) = await list_webhooks(client)
    assert (hook.attempts, hook.last_error, hook.dropped_events) == (0, "", 0)


async def test_list_webhooks_shows_a_failing_receiver_and_a_redirect_is_not_followed(
    client: Client, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.status = 302
    created = await create_webhook(client, receiver.url())
    await reset(client, "dora")

    async def failure_shown() -> admin_pb.Webhook | None:
        (hook,) = await list_webhooks(client)
        return hook if hook.last_status_code == 302 else None

    hook = await eventually(failure_shown, what="the redirect recorded as a failure")
    assert hook is not None
    assert hook.last_error == "HTTP 302: redirects are not followed"
    assert hook.attempts == 1
    assert hook.next_attempt_time.ToDatetime(UTC) <= clock.now() + timedelta(seconds=1)
    assert hook.last_attempt_time.ToDatetime(UTC) == clock.now()
    assert not hook.HasField("last_success_time")
    assert hook.webhook_id == created.webhook.webhook_id
    assert {r.path for r in receiver.received} == {"/hook"}  # /elsewhere never fetched

    receiver.status = 500

    async def second_failure() -> bool:
        clock.advance(PAST_BACKOFF)
        (hook,) = await list_webhooks(client)
        return hook.attempts == 2

    await eventually(second_failure, what="a second failed attempt")
    (hook,) = await list_webhooks(client)
    assert (hook.last_status_code, hook.last_error) == (500, "HTTP 500")
    assert hook.next_attempt_time.ToDatetime(UTC) > hook.last_attempt_time.ToDatetime(UTC) or (
        hook.next_attempt_time == hook.last_attempt_time  # full jitter may draw 0
    )
    assert {r.message_id for r in receiver.received} == {receiver.received[0].message_id}


async def test_an_event_not_delivered_within_the_horizon_is_dropped_and_counted(
    client: Client, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.status = 500
    await create_webhook(client, receiver.url())
    await reset(client, "old")
    await eventually(lambda: receiver.received, what="a first, failed attempt")
    clock.advance(RetryPolicy().horizon)

    async def dropped() -> bool:
        (hook,) = await list_webhooks(client)
        return hook.dropped_events == 1

    await eventually(dropped, what="the event dropped after the horizon")
    (hook,) = await list_webhooks(client)
    assert (hook.attempts, hook.last_status_code) == (0, 500)
    receiver.status = 200
    await reset(client, "new")
    await eventually(lambda: receiver.delivered(), what="the next event delivered")
    assert [r.user_id for r in receiver.delivered()] == ["new"]


async def test_delete_webhook_stops_deliveries_and_both_are_audited(
    client: Client, receiver: Receiver
) -> None:
    gone = await create_webhook(client, receiver.url("/gone"))
    await create_webhook(client, receiver.url("/kept"))
    await call(
        client.admin.stub.DeleteWebhook(
            admin_pb.DeleteWebhookRequest(environment_id=ENV, webhook_id=gone.webhook.webhook_id)
        )
    )
    for user in ("eve", "fay"):  # two events: the dispatcher has gone round twice
        await reset(client, user)
        await eventually(
            lambda: len(receiver.delivered("/kept")) == 1 + ("eve", "fay").index(user),  # noqa: B023
            what=f"{user}'s reset delivered to the webhook kept",
        )
    assert receiver.delivered("/gone") == []
    await refused(
        call(
            client.admin.stub.DeleteWebhook(
                admin_pb.DeleteWebhookRequest(
                    environment_id=ENV, webhook_id=gone.webhook.webhook_id
                )
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_WEBHOOK_NOT_FOUND",
    )
    [kept] = await list_webhooks(client)
    assert kept.url == receiver.url("/kept")
    events = await call(
        client.admin.stub.ListAuditEvents(
            admin_pb.ListAuditEventsRequest(
                environment_id=ENV,
                types=[T.AUDIT_EVENT_TYPE_WEBHOOK_CREATED, T.AUDIT_EVENT_TYPE_WEBHOOK_DELETED],
            )
        )
    )
    assert [(e.type, e.details["webhook_id"]) for e in reversed(events.events)] == [
        (T.AUDIT_EVENT_TYPE_WEBHOOK_CREATED, gone.webhook.webhook_id),
        (T.AUDIT_EVENT_TYPE_WEBHOOK_CREATED, kept.webhook_id),
        (T.AUDIT_EVENT_TYPE_WEBHOOK_DELETED, gone.webhook.webhook_id),
    ]


# --- the retry rule ------------------------------------------------------------------------


def test_the_backoff_doubles_from_one_second_to_ten_minutes_with_full_jitter() -> None:
    policy = RetryPolicy()
    ceilings = [policy.delay(n, rand=1.0) for n in range(1, 13)]
    assert ceilings[:4] == [timedelta(seconds=s) for s in (1, 2, 4, 8)]
    assert ceilings[-1] == timedelta(minutes=10)
    assert max(ceilings) == timedelta(minutes=10)
    assert policy.delay(5, rand=0.0) == timedelta(0)
    assert policy.delay(5, rand=0.5) == timedelta(seconds=8)
    assert policy.delay(10_000, rand=1.0) == timedelta(minutes=10)


def test_an_event_is_retried_until_the_horizon_then_given_up() -> None:
    policy = RetryPolicy(horizon=timedelta(days=3))
    happened = datetime(2026, 12, 1, tzinfo=UTC)
    before = happened + timedelta(days=3) - timedelta(seconds=1)
    retry = domain.after_failure(policy, attempts=4, occurred_at=happened, now=before, rand=1.0)
    assert retry == Retry(attempts=5, at=before + timedelta(seconds=16))
    at_horizon = happened + timedelta(days=3)
    assert (
        domain.after_failure(policy, attempts=4, occurred_at=happened, now=at_horizon, rand=1.0)
        == GiveUp()
    )


def test_a_webhook_may_receive_every_event_type() -> None:
    every = tuple(AuditEventType)
    assert domain.check_event_types(every) == every
