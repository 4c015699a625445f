"""CreateWebhook, ListWebhooks, DeleteWebhook, and the dispatcher that delivers each
webhook's events (DESIGN §3f).

The audit log is the outbox: an event is committed with the change it records, and each
webhook keeps a cursor in commit order (store.audit_stream). The dispatcher, running in
every server process, claims one due webhook at a time (store.webhooks: a lease no other
replica can take meanwhile), POSTs its next events one by one, in order, and moves the
cursor after each success. A crash between a POST and its cursor write means that event
is POSTed again, under the same ``webhook-id``: at least once, never lost. A failure
holds the webhook's whole queue at its head event (so the events of each user stay in
order) until a retry after a jittered exponential backoff succeeds, or until the event is
older than the retry horizon: then it is dropped, counted, and the queue goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

import aiohttp
from opentelemetry import trace

from mfa_service.domain import events
from mfa_service.domain import webhooks as policy
from mfa_service.domain.audit import AuditEventType, CallContext, LoggedEvent
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.domain.webhooks import (
    Delivery,
    GiveUp,
    Retry,
    RetryPolicy,
    Webhook,
    WebhookFormat,
)
from mfa_service.errors import DatabaseUnavailable, InvalidArgument, WebhookNotFound
from mfa_service.services import audit
from mfa_service.services.keys import TokenKeys
from mfa_service.services.runtime import Runtime, UseCase
from mfa_service.services.settings import load as load_settings
from mfa_service.store import audit_stream
from mfa_service.store import webhooks as webhook_store

log = logging.getLogger("mfa_service.webhooks")
_jitter = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """``allow_loopback_http``: development mode (``serve --dev``) lets a webhook POST to
    http://127.0.0.1 and the like. ``timeout``: one POST, connection included; a claim
    lasts twice as long, renewed after each delivery. ``poll_interval``: how often an
    idle dispatcher looks for due webhooks. ``batch``: events read per claim;
    ``concurrency``: POSTs in flight to one webhook (each user's events still one after
    another)."""

    allow_loopback_http: bool = False
    timeout: timedelta = timedelta(seconds=10)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval: timedelta = timedelta(seconds=1)
    batch: int = 100
    concurrency: int = 16
    per_environment: int = policy.MAX_WEBHOOKS_PER_ENVIRONMENT

    @property
    def lease(self) -> timedelta:
        return 2 * self.timeout


def _secret_context(env: EnvironmentId, webhook_id: UUID) -> bytes:
    """What a sealed secret is bound to: it opens only in its own row."""
    return f"webhook\x00{env}\x00{webhook_id}".encode()


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    webhook: Webhook
    signing_secret: str  # whsec_...: shown once


class WebhookService(UseCase):
    def __init__(self, runtime: Runtime, options: WebhookOptions) -> None:
        super().__init__(runtime)
        self._options = options

    async def create(
        self,
        env: EnvironmentId,
        *,
        url: str,
        event_types: Sequence[AuditEventType],
        format: WebhookFormat,
        context: CallContext,
    ) -> CreatedWebhook:
        """A webhook delivering the events that commit from now on."""
        url = policy.check_url(url, allow_loopback_http=self._options.allow_loopback_http)
        types = policy.check_event_types(event_types)
        if format is WebhookFormat.CAEP:
            for i, event_type in enumerate(types):
                if event_type not in events.CAEP_EVENT_TYPES:
                    raise InvalidArgument.field(
                        f"event_types[{i}]",
                        f"{event_type.name} is no credential change: CAEP has no event for it",
                    )
        now = self._clock.now()
        webhook = Webhook(
            id=uuid.uuid4(),
            environment_id=env,
            url=url,
            event_types=types,
            format=format,
            created_at=now,
            state=policy.DeliveryState(attempts=0, next_attempt_at=now),
        )
        secret = policy.new_secret()
        sealed = self._key_ring.encrypt(secret, context=_secret_context(env, webhook.id))
        async with self._db.transaction() as conn:
            # The environment's row lock: it exists, and creations there take turns for
            # the last place under the cap.
            await load_settings(conn, env, for_update=True)
            start = await audit_stream.horizon(conn)
            stored = await webhook_store.insert(
                conn, webhook, secret_sealed=sealed, start=start, cap=self._options.per_environment
            )
            if stored is None:
                raise InvalidArgument.field(
                    "environment_id",
                    f"has {self._options.per_environment} webhooks already, the most allowed: "
                    "delete one first",
                )
            await audit.record(
                conn,
                AuditEventType.WEBHOOK_CREATED,
                env=env,
                user=UserId(""),
                now=now,
                context=context,
                webhook_id=str(webhook.id),
                event_types=",".join(t.name for t in types),
                format=format.name,
            )
        return CreatedWebhook(stored, policy.secret_text(secret))

    async def list(self, env: EnvironmentId) -> list[Webhook]:
        async with self._db.transaction() as conn:
            await load_settings(conn, env)
            return await webhook_store.list_for(conn, env)

    async def delete(self, env: EnvironmentId, webhook_id: UUID, *, context: CallContext) -> None:
        """Stop delivering: what the webhook had not delivered is dropped with it (a POST
        already under way may still reach the receiver)."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            await load_settings(conn, env)
            deleted = await webhook_store.delete(conn, env, webhook_id)
            if deleted is None:
                raise WebhookNotFound()
            await audit.record(
                conn,
                AuditEventType.WEBHOOK_DELETED,
                env=env,
                user=UserId(""),
                now=now,
                context=context,
                webhook_id=str(webhook_id),
            )


# --- the dispatcher ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST came to: the receiver's status, or why there was none."""

    status: int | None
    error: str | None

    def describe(self) -> str:
        if self.error is not None:
            return self.error
        if self.status is not None and 300 <= self.status < 400:
            return f"HTTP {self.status}: redirects are not followed"
        return f"HTTP {self.status}"


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One event's attempt: the answer, and what it decided (None: delivered)."""

    answer: Answer
    decision: Retry | GiveUp | None
    at: datetime


# What a CAEP webhook's event that changed no credential comes to: delivered, with
# nothing sent.
NOTHING_TO_SEND = Answer(status=204, error=None)


async def post(
    session: aiohttp.ClientSession, url: str, delivery: Delivery, within: timedelta
) -> Answer:
    """POST ``delivery`` to ``url``: never a redirect followed, never anything else
    fetched, the answer's body never read. The error text names the kind of failure, not
    the body or the headers."""
    try:
        async with session.post(
            url,
            data=delivery.body,
            headers=dict(delivery.headers),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=within.total_seconds()),
        ) as response:
            return Answer(response.status, None)
    except TimeoutError:
        return Answer(None, f"no answer within {within.total_seconds():g} s")
    except aiohttp.ClientConnectionError as error:
        return Answer(None, f"connection failed ({type(error).__name__})")
    except aiohttp.ClientError as error:
        return Answer(None, f"request failed ({type(error).__name__})")


class Dispatcher(UseCase):
    """Delivers every webhook's events; one per server process, any number of them."""

    def __init__(
        self,
        runtime: Runtime,
        options: WebhookOptions,
        *,
        keys: TokenKeys,
        issuer: str,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``keys``: the token keys, which sign CAEP Security Event Tokens; ``issuer``:
        their ``iss`` (the action tokens' issuer); ``pace``: awaited after each batch,
        holding no claim (the delivery process's ``Pacer``: it waits while the machine is
        busy with the calls)."""
        super().__init__(runtime)
        self._options = options
        self._keys = keys
        self._issuer = issuer
        self._pace = pace

    async def run_forever(self) -> None:
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), headers={"user-agent": "mfa-service-webhooks"}
        ) as session:
            while True:
                try:
                    await self.run_once(session)
                except DatabaseUnavailable:
                    log.warning("webhook deliveries paused: database unavailable")
                except Exception:
                    # A bug or an unexpected database error must not end deliveries for
                    # the life of the process. Nothing logged here holds a secret or a body.
                    log.exception("webhook dispatch failed")
                await asyncio.sleep(self._options.poll_interval.total_seconds())

    async def run_once(self, session: aiohttp.ClientSession) -> None:
        """Serve every webhook that is due and that no other replica holds, a batch each,
        round after round while any of them had more to send."""
        more = True
        while more:
            more = False
            served: list[UUID] = []
            while True:
                now = self._clock.now()
                async with self._db.connection() as conn:  # one statement
                    held = await webhook_store.claim(
                        conn, now=now, until=now + self._options.lease, skip=served
                    )
                if held is None:
                    break
                served.append(held.webhook.id)
                # A root span per batch served (the polls that find nothing due: none).
                with (self._tracer or trace.NoOpTracer()).start_as_current_span(
                    "mfa.webhook.deliver",
                    attributes={"mfa.webhook.id": str(held.webhook.id)},
                    record_exception=False,  # a message may hold a value: the type says enough
                    set_status_on_exception=False,
                ) as span:
                    try:
                        more = await self._serve(session, held) or more
                    except Exception as error:
                        span.set_status(trace.StatusCode.ERROR, type(error).__name__)
                        raise
                if self._pace is not None:
                    await self._pace()

    async def _serve(self, session: aiohttp.ClientSession, held: webhook_store.Claim) -> bool:
        """Deliver a batch of ``held``'s events; True: all of it went and more may wait.

        Each user's events go one after another in commit order, different users' side by
        side (``WebhookOptions.concurrency`` POSTs at a time). The first delivery to fail
        stops the batch (no new POST starts) and the cursor moves past the events done
        with before it in commit order, once for the batch: whatever went after it is sent
        again on the retry, as after a crash mid-batch, under the same webhook-id; no event
        is ever skipped. No POST starts that could outlive the claim."""
        webhook = held.webhook
        async with self._db.connection() as conn:  # one statement
            events = await audit_stream.after(
                conn,
                webhook.environment_id,
                held.cursor,
                limit=self._options.batch,
            )
        if not events:
            async with self._db.connection() as conn:
                await webhook_store.release(conn, held)
            return False
        secret = self._key_ring.decrypt(
            held.secret_sealed, context=_secret_context(webhook.environment_id, webhook.id)
        )
        outcomes: list[_Outcome | None] = [None] * len(events)
        slots = asyncio.Semaphore(self._options.concurrency)
        last_start = held.until - self._options.timeout
        halted = False

        async def deliver(indexes: list[int]) -> None:
            nonlocal halted
            for i in indexes:
                if halted or self._clock.now() > last_start:
                    return
                logged = events[i][1]
                delivery = await self._delivery(webhook, logged, secret)
                async with slots:
                    answer = (
                        await post(session, webhook.url, delivery, self._options.timeout)
                        if delivery is not None
                        else NOTHING_TO_SEND
                    )
                outcome = self._outcome(
                    webhook, logged, answer, attempts=webhook.state.attempts if i == 0 else 0
                )
                outcomes[i] = outcome
                if isinstance(outcome.decision, Retry):
                    halted = True
                    return

        users: dict[str, list[int]] = {}
        for i, (_, logged) in enumerate(events):
            users.setdefault(logged.event.user_id, []).append(i)
        await asyncio.gather(*(deliver(indexes) for indexes in users.values()))

        done: list[_Outcome] = []  # the events done with, from the head on
        for outcome in outcomes:
            if outcome is None or isinstance(outcome.decision, Retry):
                break
            done.append(outcome)
        progress = None
        if done:
            posted = [o for o in done if o.answer is not NOTHING_TO_SEND]
            last = posted[-1] if posted else done[-1]
            progress = webhook_store.Progress(
                cursor=events[len(done) - 1][0],
                attempted=bool(posted),
                now=last.at,
                status=last.answer.status,
                error=last.answer.describe() if last.decision is not None else None,
                dropped=sum(o.decision is not None for o in done),
                delivered_at=max((o.at for o in posted if o.decision is None), default=None),
            )
        retry = next((o.decision for o in outcomes if o and isinstance(o.decision, Retry)), None)
        if retry is not None:
            # The queue waits for its head event: each user's events stay in order.
            if progress is not None and not await self._moved_past(
                held, progress, renewed=held.until
            ):
                return False  # deleted, or taken over after a stall: nothing more is ours
            failure = next(o for o in outcomes if o and o.decision is retry)
            async with self._db.connection() as conn:
                await webhook_store.failed(
                    conn,
                    held,
                    now=failure.at,
                    status=failure.answer.status,
                    error=failure.answer.describe(),
                    attempts=retry.attempts,
                    next_attempt_at=retry.at,
                )
            return False
        if progress is None:  # the claim ran short before any POST could start
            async with self._db.connection() as conn:
                await webhook_store.release(conn, held)
            return True
        moved = await self._moved_past(held, progress, renewed=None)
        return moved and (len(done) < len(events) or len(events) == self._options.batch)

    def _outcome(
        self, webhook: Webhook, logged: LoggedEvent, answer: Answer, *, attempts: int
    ) -> _Outcome:
        """What one POST's ``answer`` decides: delivered, retry later, or give up (past
        the horizon). ``attempts``: the event's failed attempts before this one."""
        now = self._clock.now()
        if answer.status is not None and policy.delivered(answer.status):
            return _Outcome(answer, None, now)
        log.warning(
            "webhook %s: delivery of event %s failed: %s",
            webhook.id,
            logged.event_id,
            answer.describe(),
        )
        decision = policy.after_failure(
            self._options.retry,
            attempts=attempts,
            occurred_at=logged.event.occurred_at,
            now=now,
            rand=_jitter.random(),
        )
        if isinstance(decision, GiveUp):
            log.warning(
                "webhook %s: event %s dropped after the retry horizon", webhook.id, logged.event_id
            )
        return _Outcome(answer, decision, now)

    async def _moved_past(
        self,
        held: webhook_store.Claim,
        progress: webhook_store.Progress,
        *,
        renewed: datetime | None,
    ) -> bool:
        async with self._db.connection() as conn:  # one statement
            return await webhook_store.moved_past(conn, held, progress, renewed=renewed)

    async def _delivery(
        self, webhook: Webhook, logged: LoggedEvent, secret: bytes
    ) -> Delivery | None:
        """The POST of ``logged``, signed now (a retry is signed anew, under the same id);
        None: nothing to send, the event being of a type the webhook does not take (all
        are read, so the cursor moves past the others too and never scans them twice),
        or a CAEP webhook's event that changed no credential."""
        if logged.event.type not in webhook.event_types:
            return None
        if webhook.format is WebhookFormat.CAEP:
            # OpenID CAEP credential-change SET (RFC 8417), signed with the token keys
            # (receivers verify it with GetJwks), pushed as RFC 8935 says; its audience is
            # the receiver's URL.
            claims = events.caep_set_claims(logged, issuer=self._issuer, audience=webhook.url)
            if claims is None:
                return None
            set_jwt = await self._keys.sign_security_event(claims)
            return policy.security_event_token_delivery(logged.event_id, set_jwt)
        return policy.standard_webhooks_delivery(logged, secret=secret, now=self._clock.now())
