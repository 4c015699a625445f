"""IssueActionToken, ValidateActionToken and GetJwks.

Issue: the user passes a challenge (the shared verification path, so lockout and replay
rules hold), and gets a signed token bound to environment, user, actions, and optionally
a payload digest and a session. Validate answers "may this action run now?": policy
first (is the action protected for this user?), then the token's signature and claims
in memory, then one conditional UPDATE that consumes a single-use token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from mfa_service.domain import approvals, passkeys, policy, tokens
from mfa_service.domain.audit import AuditEventType, CallContext
from mfa_service.domain.model import (
    ALWAYS_PROTECTED_ACTIONS,
    Action,
    EnvironmentId,
    Proof,
    UserId,
)
from mfa_service.domain.settings import Settings
from mfa_service.domain.tokens import ActionClaims, ApprovalClaims, Reason
from mfa_service.domain.verification import IssueToken
from mfa_service.errors import (
    ApprovalMismatch,
    ApprovalRequired,
    DatabaseUnavailable,
    EnvironmentNotFound,
    InvalidArgument,
    StepUpRequired,
)
from mfa_service.services import audit
from mfa_service.services.batching import MicroBatcher
from mfa_service.services.keys import TokenKeys
from mfa_service.services.runtime import Runtime, UseCase
from mfa_service.services.verification import Attempt, Read
from mfa_service.store import action_tokens as token_store
from mfa_service.store import devices as device_store
from mfa_service.store.db import Connection

DEFAULT_ISSUER = "mfa-service"
# How long a ValidateActionToken decision answers retries with the same idempotency key.
IDEMPOTENCY_WINDOW = timedelta(minutes=5)
AUDIENCE = "mfa-action"
# Validations decided together in one statement, and such statements run at once by one
# process. One at a time measured best (tools/bench.py, 16 calls in flight): 3.8
# validations a statement and 58 % of the empty call's throughput; with two, batches
# shrank to 1.4 and throughput to 51 %.
CONSUMPTION_BATCH = 64
CONSUMPTION_STATEMENTS = 1


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: ActionClaims


@dataclass(frozen=True, slots=True)
class Coverage:
    """What an action token covers."""

    actions: tuple[Action, ...]
    payload_digest: bytes | None
    single_use: bool
    session_id: str | None


@dataclass(frozen=True, slots=True)
class ValidationRequest:
    environment_id: EnvironmentId
    user_id: UserId
    action: Action
    token: str
    payload_digest: bytes | None
    session_id: str | None
    idempotency_key: str | None

    def fingerprint(self) -> bytes:
        """What a retry must repeat exactly to get the remembered decision."""
        parts = (
            self.environment_id,
            self.user_id,
            self.action.name,
            self.token,
            (self.payload_digest or b"").hex(),
            self.session_id or "",
        )
        return hashlib.sha256("\x00".join(parts).encode()).digest()


def _methods_text(settings: Settings, action: Action) -> str:
    """The methods the action's policy allows now, as ``token_store`` takes them."""
    return token_store.methods_text(policy.allowed_methods(settings, (action,)))


def _scoped_key(key: str | None, context: CallContext) -> str | None:
    """Idempotency keys are per calling service when callers are authenticated (mTLS),
    so one service cannot answer with another's remembered decision."""
    if not key:
        return None
    caller = "" if context.caller.startswith("unauthenticated@") else context.caller
    return f"{len(caller)}:{caller}:{key}"


def _approval_claims(bound: approvals.Bound, read: Read) -> ApprovalClaims:
    """What the token carries of its approval; a passkey's assertion signed its hash."""
    evidence = passkeys.evidence(read.assertion) if read.assertion is not None else None
    return ApprovalClaims(
        hash=bound.hash,
        challenge_id=read.challenge.id,
        expires_at=read.challenge.expires_at,
        display_text=bound.approval.display_text,
        passkey_evidence=evidence,
    )


class ActionTokenService(UseCase):
    def __init__(
        self,
        runtime: Runtime,
        keys: TokenKeys,
        *,
        issuer: str = DEFAULT_ISSUER,
        on_validation_batch: Callable[[int], None] | None = None,
    ) -> None:
        """``on_validation_batch``: told how many validations each statement decided."""
        super().__init__(runtime)
        self._keys = keys
        self._issuer = issuer
        # Idempotency keys are unique per environment in storage; a batch holds one each.
        self._consumptions = MicroBatcher(
            self._decide_batch,
            max_batch=CONSUMPTION_BATCH,
            max_in_flight=CONSUMPTION_STATEMENTS,
            conflict_key=lambda c: (
                (c.environment_id, c.idempotency_key) if c.idempotency_key else None
            ),
            fails_all=lambda error: isinstance(error, DatabaseUnavailable),
            on_batch=on_validation_batch,
            # Traced, each such statement is a span linked to the calls it decided.
            tracer=self._tracer,
            span_name="mfa.validation_batch",
        )

    # --- issue -------------------------------------------------------------------

    async def issue(
        self,
        env: EnvironmentId,
        user: UserId,
        *,
        challenge_id: UUID,
        proof: Proof,
        asked: Coverage,
        context: CallContext,
    ) -> IssuedToken:
        """Verify the proof and mint a token for what was ``asked`` (on a challenge bound
        to an approval, for the approval: ``_covered``)."""
        now = self._clock.now()
        key = await self._keys.signing_key()
        settings = await self._settings.get(env)
        if asked.actions:
            policy.require_token_allowed(settings, asked.actions, proof.method)
        read = await self._verifier.read(settings, user, challenge_id, proof, now=now)
        bound = read.challenge.approval
        covered = await self._covered(settings, read, proof, asked)
        actions, single_use = covered.actions, covered.single_use
        ttl = policy.token_ttl(settings, actions, single_use=single_use)
        claims = ActionClaims(
            jti=uuid.uuid4(),
            environment_id=env,
            user_id=user,
            actions=actions,
            single_use=single_use,
            issued_at=now,
            expires_at=now + ttl,
            method=proof.method,
            payload_digest=covered.payload_digest,
            session_id=covered.session_id,
            approval=_approval_claims(bound, read) if bound is not None else None,
        )
        token = tokens.encode(claims, key, issuer=self._issuer, audience=AUDIENCE)
        # Recorded, and its event written, only if the proof holds: the token is the
        # grant of the verification (``domain.verification``), made in its statement.
        issued = audit.event(
            AuditEventType.TOKEN_ISSUED,
            env=env,
            user=user,
            now=now,
            context=context,
            method=proof.method,
            actions=",".join(a.name for a in actions),
            single_use=str(single_use).lower(),
            jti=str(claims.jti),
        )
        if bound is not None:
            issued = dataclasses.replace(
                issued, details={**issued.details, "approval_hash": bound.hash.hex()}
            )
        grant = IssueToken(claims, tokens.token_hash(token))
        await self._verifier.verify(
            Attempt(settings, user, proof, grant, now, context, (issued,)), read
        )
        return IssuedToken(token=token, claims=claims)

    async def _covered(
        self, settings: Settings, read: Read, proof: Proof, asked: Coverage
    ) -> Coverage:
        """What the token will cover. A challenge bound to an approval covers exactly
        the approval: the request may repeat its terms or leave them empty, and asking
        for anything else spends the challenge (``ApprovalMismatch``). A plain challenge
        covers what was asked, unless an action's policy requires an approval. A
        credential change's token is single use whatever was asked (one step-up must not
        add two factors or remove them all)."""
        bound = read.challenge.approval
        if bound is not None:
            approved = approvals.fit(
                bound.approval,
                actions=asked.actions,
                payload_digest=asked.payload_digest,
                single_use=asked.single_use,
                session_id=asked.session_id,
            )
            if approved is None:
                await self._verifier.spend(read)
                raise ApprovalMismatch()
            if not asked.actions:
                policy.require_token_allowed(settings, approved.actions, proof.method)
            asked = Coverage(
                approved.actions, approved.payload_digest, approved.single_use, approved.session_id
            )
        elif not asked.actions:
            raise InvalidArgument.field(
                "actions", "at least one action is required (or a challenge bound to an approval)"
            )
        elif policy.approval_required(settings, asked.actions):
            raise ApprovalRequired()  # nothing spent: the challenge may still serve a login
        if not asked.single_use and any(a in ALWAYS_PROTECTED_ACTIONS for a in asked.actions):
            return dataclasses.replace(asked, single_use=True)
        return asked

    # --- validate ----------------------------------------------------------------

    async def validate(self, request: ValidationRequest, context: CallContext) -> Reason:
        """May this action run now? At most one database round trip when a token is given,
        shared with the validations that run concurrently (``MicroBatcher``).

        The token must be byte-identical to one we issued: its row is found by jti and
        the SHA-256 of the whole token, so a forged or altered token (another algorithm,
        ``typ``, ``aud``, ``iss``, claims or signature) matches nothing. That makes a
        signature check on this path redundant; the signature is for offline verifiers
        (GetJwks).
        """
        now = self._clock.now()
        try:
            settings = await self._settings.get(request.environment_id)
        except EnvironmentNotFound:
            # DESIGN §3c: a name never created (a typo, another case) allows nothing,
            # whatever the token; nothing is written for it (no audit, no decision kept).
            return Reason.ENVIRONMENT_UNKNOWN
        if not policy.is_protected(settings, request.action):
            return Reason.MFA_NOT_REQUIRED
        if request.token:
            return await self._with_token(None, settings, request, context, now=now)
        async with self._db.connection() as conn:
            reason = await self._without_token(conn, settings, request)
            if not reason.allows:
                await self._audit_denial(conn, request, reason, context, now=now)
        return reason

    async def _without_token(
        self, conn: Connection, settings: Settings, request: ValidationRequest
    ) -> Reason:
        devices = await device_store.list_for_user(conn, request.environment_id, request.user_id)
        methods = policy.enrolled_methods([d.method for d in devices])
        if methods:
            return Reason.MFA_REQUIRED
        if policy.enrollment_required(settings, methods):
            return Reason.ENROLLMENT_REQUIRED
        return Reason.MFA_NOT_REQUIRED

    async def _with_token(
        self,
        conn: Connection | None,
        settings: Settings,
        request: ValidationRequest,
        context: CallContext,
        *,
        now: datetime,
    ) -> Reason:
        """Decide a validation with a token: in ``conn``'s transaction when given (a
        step-up inside a credential change), else batched with concurrent validations.
        The action's policy as ``settings`` say now holds for tokens issued before it."""
        key = _scoped_key(request.idempotency_key, context)
        jti = tokens.peek(request.token, algorithms=await self._keys.algorithms())
        if jti is None:
            async with self._use(conn) as c:
                if key and (prior := await self._remembered(c, request, key, now=now)):
                    return prior
                await self._audit_denial(c, request, Reason.TOKEN_INVALID, context, now=now)
            return Reason.TOKEN_INVALID
        consumption = token_store.Consumption(
            environment_id=request.environment_id,
            user_id=request.user_id,
            jti=jti,
            token_hash=tokens.token_hash(request.token),
            action=request.action.name,
            allowed_methods=_methods_text(settings, request.action),
            require_approval=policy.approval_required(settings, (request.action,)),
            session_id=request.session_id,
            payload_digest=request.payload_digest,
            idempotency_key=key,
            fingerprint=request.fingerprint() if key else b"",
            caller=context.caller,
            request_id=context.request_id,
        )
        if conn is None:
            decided = await self._consumptions.submit(consumption)
        else:
            [decided] = await token_store.decide(
                conn, [consumption], now=now, remembered_since=now - IDEMPOTENCY_WINDOW
            )
        if decided.prior_reason is not None:
            return self._replay(
                request, decided.prior_fingerprint, decided.prior_reason, decided.token_problem
            )
        if decided.reason is None:  # pragma: no cover - the statement always decides
            raise LookupError("no decision")
        if key and not decided.remembered:
            # A concurrent call with the same key decided first: answer as it did.
            async with self._use(conn) as c:
                prior = await self._remembered(c, request, key, now=now)
            if prior is not None:
                return prior
        return Reason[decided.reason]

    async def _decide_batch(
        self, batch: Sequence[token_store.Consumption]
    ) -> list[token_store.Decided]:
        now = self._clock.now()
        async with self._db.connection() as conn:
            return await token_store.decide(
                conn, batch, now=now, remembered_since=now - IDEMPOTENCY_WINDOW
            )

    def _use(self, conn: Connection | None) -> AbstractAsyncContextManager[Connection]:
        """``conn`` if given, else a pooled connection for one statement."""
        return nullcontext(conn) if conn is not None else self._db.connection()

    async def _remembered(
        self, conn: Connection, request: ValidationRequest, key: str, *, now: datetime
    ) -> Reason | None:
        prior = await token_store.prior_decision(
            conn, request.environment_id, key, since=now - IDEMPOTENCY_WINDOW
        )
        if prior is None:
            return None
        fingerprint, reason = prior
        return self._replay(request, fingerprint, reason, None)

    @staticmethod
    def _replay(
        request: ValidationRequest,
        fingerprint: bytes | None,
        reason_name: str,
        token_problem: str | None,
    ) -> Reason:
        """The remembered decision for a retry, if it still holds.

        A retry repeats the request exactly (else INVALID_ARGUMENT) within a short
        window; and a remembered ALLOW never outlives its token: once the token has
        expired or been revoked, the retry gets that answer instead.
        """
        if fingerprint != request.fingerprint():
            raise InvalidArgument.field(
                "idempotency_key", "already used for a different validation request"
            )
        reason = Reason[reason_name]
        if reason is Reason.TOKEN_VALID and token_problem in ("TOKEN_REVOKED", "TOKEN_EXPIRED"):
            return Reason[token_problem]
        return reason

    async def _audit_denial(
        self,
        conn: Connection,
        request: ValidationRequest,
        reason: Reason,
        context: CallContext,
        *,
        now: datetime,
    ) -> None:
        await audit.record(
            conn,
            AuditEventType.TOKEN_VALIDATED,
            env=request.environment_id,
            user=request.user_id,
            now=now,
            context=context,
            action=f"ACTION_{request.action.name}",
            decision="DENY",
            reason=reason.name,
        )

    async def require_step_up(
        self,
        conn: Connection,
        env: EnvironmentId,
        user: UserId,
        action: Action,
        token: str,
        *,
        settings: Settings,
        now: datetime,
        context: CallContext,
    ) -> None:
        """Consume a token for a credential action in the caller's transaction, or refuse.

        DESIGN §2: adding or removing a factor needs the factor the user already has.
        ``settings``: the environment's, read before the transaction (the action's policy).
        """
        request = ValidationRequest(env, user, action, token, None, None, None)
        reason = (
            await self._with_token(conn, settings, request, context, now=now)
            if token
            else Reason.MFA_REQUIRED
        )
        if reason is not Reason.TOKEN_VALID:
            raise StepUpRequired(
                f"this change needs a valid ACTION_{action.name} action token ({reason.name})"
            )

    async def may_step_up(
        self, settings: Settings, user: UserId, action: Action, token: str, *, now: datetime
    ) -> bool:
        """Whether ``token`` could pass ``require_step_up`` now in the environment of
        ``settings``: a read, nothing consumed (to spend costly work only on a change that
        may happen)."""
        jti = tokens.peek(token, algorithms=await self._keys.algorithms()) if token else None
        if jti is None:
            return False
        async with self._db.connection() as conn:
            return await token_store.usable(
                conn,
                settings.environment_id,
                user,
                jti,
                tokens.token_hash(token),
                action.name,
                allowed_methods=_methods_text(settings, action),
                require_approval=policy.approval_required(settings, (action,)),
                now=now,
            )

    async def jwks(self) -> str:
        return await self._keys.jwks()
