"""IssueActionToken, ValidateActionToken and GetJwks.

Issue: the user passes a challenge (the shared verification path, so lockout and replay
rules hold), and gets a signed token bound to environment, user, actions, and optionally
a payload digest and a session. Validate answers "may this action run now?": policy
first (is the action protected for this user?), then the token's signature and claims
in memory, then one conditional UPDATE that consumes a single-use token.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import jwt

from mfa_service.clock import Clock
from mfa_service.domain import policy, tokens
from mfa_service.domain.audit import AuditEventType, CallContext
from mfa_service.domain.model import (
    ALWAYS_PROTECTED_ACTIONS,
    Action,
    EnvironmentId,
    Method,
    Proof,
    UserId,
)
from mfa_service.domain.settings import Settings
from mfa_service.domain.tokens import ActionClaims, Expectation, Reason
from mfa_service.errors import (
    ActionNotProtected,
    InvalidArgument,
    MethodNotAllowed,
    MfaError,
    StepUpRequired,
)
from mfa_service.services import audit
from mfa_service.services.keys import TokenKeys
from mfa_service.services.settings import load as load_settings
from mfa_service.services.verification import Verified, Verifier
from mfa_service.store import action_tokens as token_store
from mfa_service.store import devices as device_store
from mfa_service.store.db import Connection, Database

DEFAULT_ISSUER = "mfa-service"
# How long a ValidateActionToken decision answers retries with the same idempotency key.
IDEMPOTENCY_WINDOW = timedelta(minutes=5)
AUDIENCE = "mfa-action"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: ActionClaims


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


def _scoped_key(key: str | None, context: CallContext) -> str | None:
    """Idempotency keys are per calling service when callers are authenticated (mTLS),
    so one service cannot answer with another's remembered decision."""
    if not key:
        return None
    caller = "" if context.caller.startswith("unauthenticated@") else context.caller
    return f"{len(caller)}:{caller}:{key}"


def allowed_methods(settings: Settings, actions: tuple[Action, ...]) -> frozenset[Method]:
    """Methods that may mint a token for ``actions``.

    WaaS actions take the environment's action methods; credential actions take any
    enabled method (they guard the factors themselves). Recovery codes are the fallback
    everywhere.
    """
    allowed = set(settings.enabled_methods) | {Method.RECOVERY_CODE}
    if any(a not in ALWAYS_PROTECTED_ACTIONS for a in actions):
        allowed &= set(settings.action_methods) | {Method.RECOVERY_CODE}
    return frozenset(allowed)


class ActionTokenService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        verifier: Verifier,
        keys: TokenKeys,
        *,
        issuer: str = DEFAULT_ISSUER,
    ) -> None:
        self._db = db
        self._clock = clock
        self._verifier = verifier
        self._keys = keys
        self._issuer = issuer

    # --- issue -------------------------------------------------------------------

    async def issue(
        self,
        env: EnvironmentId,
        user: UserId,
        *,
        challenge_id: UUID,
        proof: Proof,
        actions: tuple[Action, ...],
        single_use: bool,
        payload_digest: bytes | None,
        session_id: str | None,
        context: CallContext,
    ) -> IssuedToken:
        now = self._clock.now()
        key = await self._keys.signing_key()
        async with self._db.transaction() as conn:
            settings = await load_settings(conn, env)
            for i, action in enumerate(actions):
                if action not in settings.protected_actions and action not in (
                    ALWAYS_PROTECTED_ACTIONS
                ):
                    raise ActionNotProtected(
                        f"actions[{i}]: {action.name} is not protected in this environment"
                    )
            if proof.method not in allowed_methods(settings, actions):
                raise MethodNotAllowed()
            outcome: Verified | MfaError = await self._verifier.verify(
                conn,
                settings=settings,
                env=env,
                user=user,
                challenge_id=challenge_id,
                proof=proof,
                now=now,
                context=context,
            )
            if isinstance(outcome, Verified):
                ttl = settings.single_use_token_ttl if single_use else settings.multi_use_token_ttl
                claims = ActionClaims(
                    jti=uuid.uuid4(),
                    environment_id=env,
                    user_id=user,
                    actions=actions,
                    single_use=single_use,
                    issued_at=now,
                    expires_at=now + ttl,
                    method=outcome.method,
                    payload_digest=payload_digest,
                    session_id=session_id,
                )
                await token_store.insert(conn, claims)
                await audit.record(
                    conn,
                    AuditEventType.TOKEN_ISSUED,
                    env=env,
                    user=user,
                    now=now,
                    context=context,
                    method=outcome.method,
                    device_id=outcome.device_id,
                    actions=",".join(a.name for a in actions),
                    single_use=str(single_use).lower(),
                    jti=str(claims.jti),
                )
        if isinstance(outcome, MfaError):
            raise outcome
        token = tokens.encode(claims, key, issuer=self._issuer, audience=AUDIENCE)
        return IssuedToken(token=token, claims=claims)

    # --- validate ----------------------------------------------------------------

    async def validate(self, request: ValidationRequest, context: CallContext) -> Reason:
        now = self._clock.now()
        claims = await self._decode(request, now=now)
        key = _scoped_key(request.idempotency_key, context)
        async with self._db.transaction() as conn:
            if key:
                prior = await self._prior(conn, request, key, claims, now=now)
                if prior is not None:
                    return prior
            reason = await self.redeem(conn, request, claims, now=now)
            if key and not await token_store.remember_decision(
                conn,
                request.environment_id,
                key,
                fingerprint=request.fingerprint(),
                decision="ALLOW" if reason.allows else "DENY",
                reason=reason.name,
                now=now,
            ):
                # A concurrent call with the same key decided first: answer as it did.
                prior = await self._prior(conn, request, key, claims, now=now)
                if prior is not None:
                    return prior
            if request.token or not reason.allows:
                await audit.record(
                    conn,
                    AuditEventType.TOKEN_VALIDATED,
                    env=request.environment_id,
                    user=request.user_id,
                    now=now,
                    context=context,
                    action=request.action.name,
                    decision="ALLOW" if reason.allows else "DENY",
                    reason=reason.name,
                    jti=str(claims.jti) if isinstance(claims, ActionClaims) else "",
                )
        return reason

    async def _prior(
        self,
        conn: Connection,
        request: ValidationRequest,
        key: str,
        claims: ActionClaims | tokens.TokenProblem | None,
        *,
        now: datetime,
    ) -> Reason | None:
        """The remembered decision for a retry, if it still holds.

        A retry repeats the request exactly (else INVALID_ARGUMENT) within a short
        window; and a remembered ALLOW never outlives its token: once the token has
        expired or been revoked, the retry gets that answer instead.
        """
        prior = await token_store.prior_decision(
            conn, request.environment_id, key, since=now - IDEMPOTENCY_WINDOW
        )
        if prior is None:
            return None
        fingerprint, _decision, reason_name = prior
        if fingerprint != request.fingerprint():
            raise InvalidArgument.field(
                "idempotency_key", "already used for a different validation request"
            )
        reason = Reason[reason_name]
        if reason is Reason.TOKEN_VALID:
            if isinstance(claims, tokens.TokenProblem):
                return Reason.of(claims)
            if isinstance(claims, ActionClaims):
                state = await token_store.state(conn, claims.jti)
                if state is None or state[1] is not None:
                    return Reason.TOKEN_REVOKED
        return reason

    async def _decode(
        self, request: ValidationRequest, *, now: datetime
    ) -> ActionClaims | tokens.TokenProblem | None:
        if not request.token:
            return None
        try:
            kid = jwt.get_unverified_header(request.token).get("kid")
        except jwt.PyJWTError:
            return tokens.TokenProblem.INVALID
        keys = await self._keys.verification_keys(kid if isinstance(kid, str) else None)
        return tokens.decode(
            request.token,
            keys=keys,
            algorithm=self._keys.algorithm,
            issuer=self._issuer,
            audience=AUDIENCE,
            now=now,
        )

    async def redeem(
        self,
        conn: Connection,
        request: ValidationRequest,
        claims: ActionClaims | tokens.TokenProblem | None,
        *,
        now: datetime,
    ) -> Reason:
        """The decision for ``request``; consumes the token if it is single use and fits."""
        settings = await load_settings(conn, request.environment_id)
        protected = request.action in ALWAYS_PROTECTED_ACTIONS or (
            request.action in settings.protected_actions
        )
        if not protected:
            return Reason.MFA_NOT_REQUIRED
        if claims is None:
            devices = await device_store.list_for_user(
                conn, request.environment_id, request.user_id
            )
            methods = policy.enrolled_methods(settings, [d.method for d in devices])
            if methods:
                return Reason.MFA_REQUIRED
            if policy.enrollment_required(settings, methods):
                return Reason.ENROLLMENT_REQUIRED
            return Reason.MFA_NOT_REQUIRED
        if isinstance(claims, tokens.TokenProblem):
            return Reason.of(claims)
        problem = tokens.mismatch(
            claims,
            Expectation(
                environment_id=request.environment_id,
                user_id=request.user_id,
                action=request.action,
                payload_digest=request.payload_digest,
                session_id=request.session_id,
            ),
        )
        if problem is not None:
            return Reason.of(problem)
        if claims.single_use and await token_store.consume(conn, claims.jti, now=now):
            return Reason.TOKEN_VALID
        state = await token_store.state(conn, claims.jti)
        if state is None:
            return Reason.TOKEN_INVALID  # signed by us but never recorded: refuse
        consumed_at, revoked_at = state
        if revoked_at is not None:
            return Reason.TOKEN_REVOKED
        if claims.single_use:
            return Reason.TOKEN_ALREADY_USED if consumed_at else Reason.TOKEN_EXPIRED
        return Reason.TOKEN_VALID

    async def require_step_up(
        self,
        conn: Connection,
        env: EnvironmentId,
        user: UserId,
        action: Action,
        token: str,
        *,
        now: datetime,
    ) -> None:
        """Consume a token for a credential action in the caller's transaction, or refuse.

        DESIGN §2: adding or removing a factor needs the factor the user already has.
        """
        request = ValidationRequest(env, user, action, token, None, None, None)
        reason = await self.redeem(conn, request, await self._decode(request, now=now), now=now)
        if reason is not Reason.TOKEN_VALID:
            raise StepUpRequired(
                f"this change needs a valid ACTION_{action.name} action token ({reason.name})"
            )

    async def jwks(self) -> str:
        return await self._keys.jwks()
