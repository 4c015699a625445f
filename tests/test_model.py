"""A stateful model test: random sequences of the user-facing RPCs, for two users and two
callers each, against the real server, with invariants checked after every step.

The two callers of a user share all the calling service asserts (environment, user id,
login session) and differ only in what they know. The *user* knows the factors they
enrolled, the recovery codes shown to them and the tokens they earned. The *attacker*
holds the same primary session and knows no factor of the user: they may start and
complete enrollments of their own, guess codes, replay tokens the user has spent, and
use whatever their own factors earn. Some steps fire several calls at once.

After every step, from the answers and the database (read directly):

1. a user with a verified factor never gains one without a consumed
   ``ACTION_CREDENTIAL_LINK`` token (one token, one factor); a user with none gains at
   most one without;
2. a protected action (the environment's protected actions and the credential actions)
   is never ALLOWed, nor done, without a token while the user has a factor;
3. consecutive failures of codes and passkeys without a success never exceed the hard
   limit of 100 (past it only recovery codes, the way out, still count, within the
   lockouts), and the count never starts over by itself: ``mfa_users.failed_attempts``
   is at least the number of failures the callers were told of since the last success;
4. at most ten live recovery codes per user;
5. a user with no device has no live recovery codes;
6. no call answers ``INTERNAL`` or ``UNKNOWN``;
7. a credential step-up token (LINK, UNLINK, REGENERATE) does one thing, and dies with
   the device that earned it.

Each answer must also be one the model allows for that call (a refusal by its status
code and reason), and where the model knows the outcome (a correct code for a fresh
time step, the user not locked out, nothing else in flight) it must be that outcome.
Where calls run concurrently, only the invariants are checked.

Budget: ``make test`` runs ``MODEL_EXAMPLES`` sequences of up to ``MODEL_STEPS`` steps,
derandomized (the same sequences on every run and machine, so a CI failure replays
locally with the same code); ``make test-model`` runs more of them with fresh random
sequences each time (``MFA_MODEL_EXAMPLES``, ``MFA_MODEL_STEPS``, ``MFA_MODEL_RANDOM``),
and a failure prints the ``@reproduce_failure`` blob that replays it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg
import grpc
import pyotp
from authenticator import SoftAuthenticator, unb64url
from google.protobuf import duration_pb2, field_mask_pb2
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from helpers import FakeClock
from mfa.v1 import action_token_service_pb2 as at_pb
from mfa.v1 import admin_service_pb2 as admin_pb
from mfa.v1 import mfa_service_pb2 as pb
from mfa.v1 import types_pb2 as types
from mfa_client import Client, MfaServiceError

MODEL_EXAMPLES = int(os.environ.get("MFA_MODEL_EXAMPLES", "60"))
MODEL_STEPS = int(os.environ.get("MFA_MODEL_STEPS", "40"))
MODEL_RANDOM = os.environ.get("MFA_MODEL_RANDOM", "") not in ("", "0")

MODEL_SETTINGS = settings(
    max_examples=MODEL_EXAMPLES,
    stateful_step_count=MODEL_STEPS,
    deadline=None,
    derandomize=not MODEL_RANDOM,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)

CALL_TIMEOUT = 30.0
STEP_TIMEOUT = 300.0
ORIGIN = "https://app.example.com"
RP_ID = "example.com"
HARD_LIMIT = 100  # consecutive failures (NIST SP 800-63B §3.2.2)
MAX_LIVE_CODES = 10
MAX_PASSKEYS = 10
# An open challenge count under any sensible cap: outcomes are predicted only below it.
FEW_OPEN_CHALLENGES = 3

USERS = ("alice", "bob")
ACTORS = ("user", "attacker")
METHODS = {"totp": types.METHOD_TOTP, "passkey": types.METHOD_PASSKEY}
LINK = types.ACTION_CREDENTIAL_LINK
UNLINK = types.ACTION_CREDENTIAL_UNLINK
REGENERATE = types.ACTION_RECOVERY_CODES_REGENERATE
SIGN = types.ACTION_WAAS_SIGN
CREDENTIAL_ACTIONS = frozenset({LINK, UNLINK, REGENERATE})
ACTIONS = {"link": LINK, "unlink": UNLINK, "regenerate": REGENERATE, "sign": SIGN}
TOKEN_ACTIONS = {
    "link": (LINK,),
    "unlink": (UNLINK,),
    "regenerate": (REGENERATE,),
    "credential": (LINK, UNLINK, REGENERATE),
    "sign": (SIGN,),
}
PROFILES = {  # (totp_enabled, passkey_enabled, action_methods)
    "both": (True, True, [types.METHOD_TOTP, types.METHOD_PASSKEY]),
    "totp-only": (True, False, [types.METHOD_TOTP]),
    "passkey-only": (False, True, [types.METHOD_PASSKEY]),
}
# A credential change and the purpose of the token it needs.
STEP_UPS = {
    "add-totp": "link",
    "add-passkey": "link",
    "delete": "unlink",
    "regenerate": "regenerate",
}
RACE_CALLS = [*sorted(STEP_UPS), "complete", "validate", "verify"]
WRONG_RECOVERY_CODE = "00000-00000-00000-00000"

_ENVIRONMENTS = itertools.count(1)

# --- refusals the model allows, by status code and ErrorInfo reason --------------------

Refusal = tuple[grpc.StatusCode, str]


def refusal(code: str, reason: str) -> Refusal:
    return grpc.StatusCode[code], f"ERROR_REASON_{reason}"


STEP_UP = refusal("PERMISSION_DENIED", "STEP_UP_REQUIRED")
FAILED = refusal("PERMISSION_DENIED", "VERIFICATION_FAILED")
LOCKED = refusal("RESOURCE_EXHAUSTED", "LOCKED_OUT")
RECOVERY_REQUIRED = refusal("FAILED_PRECONDITION", "RECOVERY_REQUIRED")
TOO_MANY_CHALLENGES = refusal("RESOURCE_EXHAUSTED", "TOO_MANY_CHALLENGES")
DISABLED = refusal("FAILED_PRECONDITION", "METHOD_DISABLED")
LIMIT = refusal("FAILED_PRECONDITION", "DEVICE_LIMIT_REACHED")
ENROLLMENT_GONE = refusal("NOT_FOUND", "ENROLLMENT_NOT_FOUND")
CHALLENGE_GONE = refusal("NOT_FOUND", "CHALLENGE_NOT_FOUND")
DEVICE_GONE = refusal("NOT_FOUND", "DEVICE_NOT_FOUND")
NOT_ENROLLED = refusal("FAILED_PRECONDITION", "NOT_ENROLLED")
NOT_PROTECTED = refusal("FAILED_PRECONDITION", "ACTION_NOT_PROTECTED")
NOT_ALLOWED = refusal("FAILED_PRECONDITION", "METHOD_NOT_ALLOWED")
INVALID = refusal("INVALID_ARGUMENT", "INVALID_ARGUMENT")
GATES = {LOCKED, RECOVERY_REQUIRED}  # any verification may meet them
# A settings change the service finds unwise: a validation error, or (issue 17) one that
# would leave enrolled users without a way to pass.
SETTINGS_REFUSALS = {INVALID, DISABLED, NOT_ENROLLED}


async def create_environment(client: Client, env: str) -> None:
    """AdminService.CreateEnvironment with the default settings (DESIGN §3c)."""
    request = admin_pb.CreateEnvironmentRequest(settings=types.Settings(environment_id=env))
    try:
        await client.admin.stub.CreateEnvironment(request, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        raise MfaServiceError.from_rpc_error(error) from None


# --- what the model knows ----------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The environment's settings as the last accepted UpdateSettings answered them."""

    totp: bool = True
    passkey: bool = True
    action_methods: frozenset[int] = frozenset(METHODS.values())
    protected: frozenset[int] = frozenset()
    max_totp: int = 1

    @classmethod
    def of(cls, s: types.Settings) -> Policy:
        return cls(
            totp=s.totp_enabled,
            passkey=s.passkey_enabled,
            action_methods=frozenset(s.action_methods),
            protected=frozenset(s.protected_actions),
            max_totp=s.totp.max_devices,
        )

    def enabled(self, method: int) -> bool:
        return self.totp if method == types.METHOD_TOTP else self.passkey

    def is_protected(self, action: int) -> bool:
        return action in CREDENTIAL_ACTIONS or action in self.protected

    def limit(self, method: int) -> int:
        return self.max_totp if method == types.METHOD_TOTP else MAX_PASSKEYS

    def mints(self, method: int, actions: Iterable[int]) -> bool:
        """May ``method`` earn a token for ``actions`` (all protected)?"""
        actions = tuple(actions)
        if not all(self.is_protected(a) for a in actions) or not self.enabled(method):
            return False
        waas = any(a not in CREDENTIAL_ACTIONS for a in actions)
        return not waas or method in self.action_methods


@dataclass
class Token:
    token: str
    jti: str
    actions: frozenset[int]
    single_use: bool  # as asked for
    device_id: str | None  # the device that earned it; None for a recovery code
    owner: str
    expires_at: datetime
    uses: int = 0  # ALLOWs and credential changes it was accepted for


@dataclass
class Device:
    id: str
    method: types.Method.ValueType
    owner: str
    secret: str | None = None  # TOTP
    authenticator: SoftAuthenticator | None = None  # passkey
    last_step: int = -1  # the highest TOTP step sent (used or not)


@dataclass
class Enrollment:
    id: str
    method: types.Method.ValueType
    owner: str
    expires_at: datetime
    secret: str | None
    options: str | None
    link: Token | None  # the LINK token its Enroll carried
    linked: bool  # its Enroll succeeded with a token fit for ACTION_CREDENTIAL_LINK
    devices_at_enroll: frozenset[str]
    superseded: bool = False  # a later Enroll of the user succeeded


@dataclass
class User:
    name: str
    session: str
    devices: dict[str, Device] = field(default_factory=dict)
    pending: list[Enrollment] = field(default_factory=list)
    tokens: dict[str, list[Token]] = field(default_factory=lambda: {a: [] for a in ACTORS})
    spent: list[Token] = field(default_factory=list)  # the user's, seen by the attacker
    codes: dict[str, list[str]] = field(default_factory=lambda: {a: [] for a in ACTORS})
    failures: int = 0  # VERIFICATION_FAILED answers since the last success
    recovery_failures: int = 0  # of them, answers to a recovery code
    enrolled_with: set[str] = field(default_factory=set)  # LINK tokens Enroll accepted
    link_claims: set[str] = field(default_factory=set)  # LINK tokens that added a factor


@dataclass(frozen=True)
class Snapshot:
    """What the database holds for the environment after a step."""

    devices: dict[str, dict[str, int | None]]  # user -> device id -> totp_last_step
    methods: dict[str, str]  # device id -> method name
    live_codes: dict[str, int]
    attempts: dict[str, tuple[int, datetime | None]]
    consumed: frozenset[str]  # jti of consumed tokens
    open_challenges: dict[str, int]

    def open(self, user: str, now: datetime) -> bool:
        """Verifications of ``user`` may run: no lockout, under the hard limit."""
        failed, until = self.attempts[user]
        return failed < HARD_LIMIT and (until is None or until <= now)


@dataclass
class StepLog:
    """What the calls of one step answered, for the invariants."""

    completed: dict[str, dict[str, Enrollment]] = field(
        default_factory=lambda: {u: {} for u in USERS}
    )
    deleted: dict[str, set[str]] = field(default_factory=lambda: {u: set() for u in USERS})
    reset: set[str] = field(default_factory=set)
    successes: set[str] = field(default_factory=set)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    recovery_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    unprotected_allows: list[tuple[str, types.Action.ValueType]] = field(default_factory=list)
    tokenless_changes: list[tuple[str, str]] = field(default_factory=list)
    uses: list[tuple[str, Token, types.Action.ValueType]] = field(
        default_factory=list
    )  # user, token, action


def jti_of(token: str) -> str:
    return str(json.loads(unb64url(token.split(".")[1]))["jti"])


def when(timestamp: Any) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def step_of(at: datetime) -> int:
    return int(at.timestamp()) // 30


@dataclass
class Context:
    loop: asyncio.AbstractEventLoop
    client: Client
    db: asyncpg.Connection
    clock: FakeClock


Op = Callable[[], Awaitable[object]]


class MfaModel(RuleBasedStateMachine):
    context: ClassVar[Context | None] = None

    def __init__(self) -> None:
        super().__init__()
        assert self.context is not None
        self.ctx = self.context
        self.client = self.ctx.client
        self.clock = self.ctx.clock
        self.env = f"model-{next(_ENVIRONMENTS)}"
        self.policy = Policy()
        self.users = {u: User(u, session=f"session-{u}") for u in USERS}
        self.log = StepLog()
        self.reserved: set[str] = set()
        self.before: Snapshot | None = None
        self.history: list[str] = []

    # --- running a step ------------------------------------------------------------

    def _run(self, coroutine: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self.ctx.loop).result(STEP_TIMEOUT)

    def _step(self, *ops: Op) -> None:
        """Run ``ops`` at once, then check every invariant against the database."""
        rule_frame = sys._getframe(1)  # the rule, for the history of this example
        args = rule_frame.f_code.co_varnames[1 : rule_frame.f_code.co_argcount]
        shown = ", ".join(f"{a}={rule_frame.f_locals[a]!r}" for a in args)
        self.history.append(f"{rule_frame.f_code.co_name}({shown})")
        self.notes: list[str] = []
        failure: BaseException | None = None
        try:
            self._run(self._step_async(ops))
        except BaseException as error:
            failure = error
        counted = collections.Counter(self.notes)  # a burst's answers, once each
        lines = [f"{line} (x{n})" if n > 1 else line for line, n in counted.items()]
        self.history += lines
        for line in lines:  # Hypothesis takes notes on its own thread only
            note(line)
        if failure is not None:
            # A failure that depends on timing may not replay, and then Hypothesis shows
            # no steps: the error carries them.
            failure.add_note("this example's steps and answers:\n" + "\n".join(self.history))
            raise failure

    async def _step_async(self, ops: tuple[Op, ...]) -> None:
        if self.before is None:
            self.before = await self._snapshot()
        self.log = StepLog()
        self.reserved = set()
        results = await asyncio.gather(*(op() for op in ops), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        after = await self._snapshot()
        self._count_failures()
        self._check(self.before, after)
        self._sync(after)
        self.before = after

    async def _rpc(
        self, name: str, call: Awaitable[Any], allowed: set[Refusal], *, who: str = ""
    ) -> Any:
        """The answer, or the refusal if it is one ``allowed`` (invariant 6 for all)."""
        try:
            answer = await call
        except grpc.aio.AioRpcError as error:
            refused = MfaServiceError.from_rpc_error(error)
            self.notes.append(f"  {name} {who}: {refused.code.name} {refused.reason}")
            assert refused.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                f"invariant 6: {name} answered {refused.code.name}: {refused.message}"
            )
            assert (refused.code, refused.reason) in allowed, (
                f"{name} {who}: unexpected {refused.code.name} {refused.reason}: {refused.message}"
            )
            return refused
        self.notes.append(f"  {name} {who}: OK")
        return answer

    async def _snapshot(self) -> Snapshot:
        db, env = self.ctx.db, self.env
        devices: dict[str, dict[str, int | None]] = {u: {} for u in USERS}
        methods: dict[str, str] = {}
        for row in await db.fetch(
            "SELECT id::text AS id, user_id, method, totp_last_step FROM devices "
            "WHERE environment_id = $1",
            env,
        ):
            devices[row["user_id"]][row["id"]] = row["totp_last_step"]
            methods[row["id"]] = row["method"]
        live_codes = dict.fromkeys(USERS, 0)
        for row in await db.fetch(
            "SELECT user_id, count(*) AS n FROM recovery_codes "
            "WHERE environment_id = $1 AND used_at IS NULL GROUP BY user_id",
            env,
        ):
            live_codes[row["user_id"]] = row["n"]
        attempts: dict[str, tuple[int, datetime | None]] = dict.fromkeys(USERS, (0, None))
        for row in await db.fetch(
            "SELECT user_id, failed_attempts, locked_until FROM mfa_users "
            "WHERE environment_id = $1",
            env,
        ):
            attempts[row["user_id"]] = (row["failed_attempts"], row["locked_until"])
        consumed = frozenset(
            row["jti"]
            for row in await db.fetch(
                "SELECT jti::text AS jti FROM action_tokens "
                "WHERE environment_id = $1 AND consumed_at IS NOT NULL",
                env,
            )
        )
        open_challenges = dict.fromkeys(USERS, 0)
        for row in await db.fetch(
            "SELECT user_id, count(*) AS n FROM challenges "
            "WHERE environment_id = $1 AND expires_at > $2 GROUP BY user_id",
            env,
            self.clock.now(),
        ):
            open_challenges[row["user_id"]] = row["n"]
        return Snapshot(devices, methods, live_codes, attempts, consumed, open_challenges)

    # --- the invariants --------------------------------------------------------------

    def _count_failures(self) -> None:
        for name, user in self.users.items():
            if name in self.log.successes or name in self.log.reset:
                user.failures = 0  # failures in the same step may come before the success
                user.recovery_failures = 0
            else:
                user.failures += self.log.failures[name]
                user.recovery_failures += self.log.recovery_failures[name]

    def _check(self, before: Snapshot, after: Snapshot) -> None:
        log = self.log
        for name, user in self.users.items():
            had, has = before.devices[name], after.devices[name]
            added = sorted(has.keys() - had.keys())
            removed = had.keys() - has.keys()
            completed = log.completed[name]
            assert set(added) <= completed.keys(), (
                f"{name}: device(s) {set(added) - completed.keys()} appeared that no "
                f"successful CompleteEnrollment of this step returned"
            )
            assert name in log.reset or removed <= log.deleted[name], (
                f"{name}: device(s) {removed - log.deleted[name]} vanished without "
                f"DeleteDevice or ResetUserMfa"
            )
            unlinked = [d for d in added if not self._linked(user, completed[d], after)]
            owners = {d: completed[d].owner for d in unlinked}
            assert not (had and unlinked), (
                f"invariant 1: {name} had a factor and gained {owners} "
                "without a consumed ACTION_CREDENTIAL_LINK token"
            )
            assert len(unlinked) <= 1, (
                f"invariant 1: {name} had no factor and gained {owners} at once, "
                "the second without a consumed ACTION_CREDENTIAL_LINK token"
            )
            failed = after.attempts[name][0]
            # At the hard limit an authenticator app or passkey is refused uncounted; only
            # recovery codes (75-bit secrets, the way out) still count, within lockouts.
            assert user.failures - user.recovery_failures <= HARD_LIMIT, (
                f"invariant 3: {name} was told of {user.failures - user.recovery_failures} "
                f"consecutive failures of a code or passkey (hard limit {HARD_LIMIT})"
            )
            assert failed <= HARD_LIMIT + user.recovery_failures, (
                f"invariant 3: {name} has failed_attempts={failed}, past the hard limit "
                f"{HARD_LIMIT} by more than its {user.recovery_failures} recovery-code failures"
            )
            assert failed >= user.failures, (
                f"invariant 3: {name} was told of {user.failures} consecutive failures "
                f"but failed_attempts={failed}: the count started over without a success"
            )
            assert after.live_codes[name] <= MAX_LIVE_CODES, (
                f"invariant 4: {name} has {after.live_codes[name]} live recovery codes"
            )
            assert has or after.live_codes[name] == 0, (
                f"invariant 5: {name} has no device and {after.live_codes[name]} live "
                "recovery codes"
            )
        for name, action in log.unprotected_allows:
            if self.policy.is_protected(action) and before.devices[name] and (after.devices[name]):
                raise AssertionError(
                    f"invariant 2: ValidateActionToken({types.Action.Name(action)}) "
                    f"without a token ALLOWed for {name}, who has a factor"
                )
        for name, change in log.tokenless_changes:
            raise AssertionError(f"invariant 2: {change} for {name} without a token")
        for name, token, action in log.uses:
            credential = action in CREDENTIAL_ACTIONS
            assert token.uses <= 1 or not (token.single_use or credential), (
                f"invariant 7: a {'single-use' if token.single_use else 'multi-use'} token "
                f"of {name} was accepted {token.uses} times, last for "
                f"{types.Action.Name(action)}"
            )
            assert (
                not credential
                or token.device_id is None
                or (token.device_id in before.devices[name])
            ), (
                f"invariant 7: a token of {name} earned by a deleted device was accepted "
                f"for {types.Action.Name(action)}"
            )

    def _linked(self, user: User, enrollment: Enrollment, after: Snapshot) -> bool:
        """Did ``enrollment`` consume a LINK token no other factor or action claimed?"""
        token = enrollment.link
        if (
            token is None
            or not enrollment.linked
            or LINK not in token.actions
            or token.jti not in after.consumed
            or token.jti in user.link_claims
            or token.uses
        ):
            return False
        user.link_claims.add(token.jti)
        return True

    def _sync(self, after: Snapshot) -> None:
        for name, user in self.users.items():
            present = after.devices[name]
            user.devices = {i: d for i, d in user.devices.items() if i in present}
            for device_id, step in present.items():
                if step is not None and device_id in user.devices:
                    device = user.devices[device_id]
                    device.last_step = max(device.last_step, step)
            if not present:
                user.codes = {a: [] for a in ACTORS}

    # --- helpers for the calls -------------------------------------------------------

    def _pick_token(
        self, user: User, actor: str, action: int, pick: int | Token | None
    ) -> Token | None:
        """``pick`` itself, or one of the tokens ``actor`` holds (for the attacker also the
        user's spent ones), preferring those for ``action`` and not yet accepted or picked."""
        if pick is None or isinstance(pick, Token):
            return pick
        pool = user.tokens[actor] + (user.spent if actor == "attacker" else [])
        fitting = [t for t in pool if action in t.actions] or pool
        if not fitting:
            return None
        fitting.sort(key=lambda t: (t.jti in self.reserved, t.uses > 0))
        token = fitting[pick % len(fitting)]
        self.reserved.add(token.jti)
        return token

    def _fits_link(self, user: User, token: Token, now: datetime) -> bool:
        """Could ``token`` pass a LINK step-up now: for LINK, live, never accepted, never
        carried by another Enroll, and the device that earned it still there?"""
        assert self.before is not None
        return (
            LINK in token.actions
            and now < token.expires_at
            and token.uses == 0
            and token.jti not in user.enrolled_with
            and (token.device_id is None or token.device_id in self.before.devices[user.name])
        )

    def _spend(self, user: User, actor: str, token: Token | None) -> None:
        """The attacker sees the tokens the user presents."""
        if token is not None and actor == "user" and token not in user.spent:
            user.spent.append(token)

    def _used(self, user: User, token: Token, action: types.Action.ValueType) -> None:
        token.uses += 1
        self.log.uses.append((user.name, token, action))

    def _fresh_totp(self, device: Device) -> str:
        """A code of ``device`` for a time step after any it was sent (moving the clock
        forward when needed)."""
        assert self.before is not None and device.secret is not None
        stored = self.before.devices[self._owner_of(device)].get(device.id)
        last = max(device.last_step, stored if stored is not None else -1)
        now = step_of(self.clock.now())
        if last >= now:
            self.clock.advance(timedelta(seconds=30 * (last - now + 1)))
        device.last_step = step_of(self.clock.now())
        return pyotp.TOTP(device.secret).at(self.clock.now())

    def _owner_of(self, device: Device) -> str:
        return next(n for n, u in self.users.items() if device.id in u.devices)

    def _wrong_totp(self, user: User) -> str:
        """A code no TOTP secret of ``user`` accepts around now."""
        secrets = [d.secret for d in user.devices.values() if d.secret]
        secrets += [e.secret for e in user.pending if e.secret]
        valid = {
            pyotp.TOTP(s).at(self.clock.now(), counter_offset=offset)
            for s in secrets
            for offset in range(-2, 3)
        }
        return next(c for c in (f"{n:06d}" for n in range(10**6)) if c not in valid)

    def _mfa(self) -> Any:
        return self.client.mfa_stub

    # --- the calls -------------------------------------------------------------------

    async def op_enroll(
        self, name: str, actor: str, method: str, token_pick: int | Token | None, solo: bool
    ) -> Enrollment | None:
        assert self.before is not None
        user, kind = self.users[name], METHODS[method]
        token = self._pick_token(user, actor, LINK, token_pick)
        had = frozenset(self.before.devices[name])
        now = self.clock.now()
        linked = token is not None and self._fits_link(user, token, now)
        answer = await self._rpc(
            "Enroll",
            self._mfa().Enroll(
                pb.EnrollRequest(
                    environment_id=self.env,
                    user_id=name,
                    method=kind,
                    action_token=token.token if token else "",
                ),
                timeout=CALL_TIMEOUT,
            ),
            {STEP_UP, LIMIT, DISABLED} | GATES,
            who=f"{name}/{actor} {method}",
        )
        self._spend(user, actor, token)
        if isinstance(answer, MfaServiceError):
            assert not (
                solo
                and token is None
                and not had
                and self.policy.enabled(kind)
                and self.before.open(name, now)
            ), f"Enroll({method}) of {name}, who has no factor, was refused"
            return None
        assert self.policy.enabled(kind), f"Enroll({method}) succeeded while it is disabled"
        if token is not None:
            user.enrolled_with.add(token.jti)
        for other in user.pending:
            other.superseded = True
        enrollment = Enrollment(
            id=answer.enrollment_id,
            method=kind,
            owner=actor,
            expires_at=when(answer.expires_at),
            secret=answer.totp.secret if answer.HasField("totp") else None,
            options=(answer.passkey.creation_options_json if answer.HasField("passkey") else None),
            link=token,
            linked=linked,
            devices_at_enroll=had,
        )
        user.pending.append(enrollment)
        return enrollment

    async def op_enroll_and_complete(
        self, name: str, actor: str, method: str, token_pick: int | None
    ) -> None:
        enrollment = await self.op_enroll(name, actor, method, token_pick, solo=True)
        if enrollment is not None:
            await self.op_complete(name, 0, True, solo=True, only=enrollment)

    async def op_complete(
        self, name: str, pick: int, correct: bool, solo: bool, only: Enrollment | None = None
    ) -> None:
        """CompleteEnrollment of a pending enrollment (``only``, or the ``pick``-th), by
        the caller who started it."""
        assert self.before is not None
        user = self.users[name]
        if only is None and not user.pending:
            return
        enrollment = only or user.pending[pick % len(user.pending)]
        actor = enrollment.owner
        request = pb.CompleteEnrollmentRequest(
            environment_id=self.env, user_id=name, enrollment_id=enrollment.id
        )
        authenticator = None
        step = step_of(self.clock.now())
        if enrollment.method == types.METHOD_TOTP:
            assert enrollment.secret is not None
            request.totp_code = (
                pyotp.TOTP(enrollment.secret).at(self.clock.now())
                if correct
                else self._wrong_totp(user)
            )
        else:
            assert enrollment.options is not None
            authenticator = SoftAuthenticator(origin=ORIGIN, rp_id=RP_ID)
            wrong: dict[str, Any] = {} if correct else {"challenge": b"\x00" * 32}
            request.passkey_registration_json = authenticator.register(enrollment.options, **wrong)
        now = self.clock.now()
        had = frozenset(self.before.devices[name])
        expected = (
            solo
            and correct
            and not enrollment.superseded
            and now < enrollment.expires_at
            and self.policy.enabled(enrollment.method)
            and self.before.open(name, now)
            and had == enrollment.devices_at_enroll
            and (not had or enrollment.linked)
            and sum(
                1 for d in had if self.before.methods[d] == types.Method.Name(enrollment.method)[7:]
            )
            < self.policy.limit(enrollment.method)
        )
        answer = await self._rpc(
            "CompleteEnrollment",
            self._mfa().CompleteEnrollment(request, timeout=CALL_TIMEOUT),
            {ENROLLMENT_GONE, STEP_UP, FAILED, LIMIT, DISABLED} | GATES,
            who=f"{name}/{actor} {'right' if correct else 'wrong'}",
        )
        if isinstance(answer, MfaServiceError):
            if (answer.code, answer.reason) == FAILED:
                self.log.failures[name] += 1
                assert not correct, "a correct proof failed to complete an enrollment"
            gone = authenticator is not None or (answer.code, answer.reason) == ENROLLMENT_GONE
            if gone and enrollment in user.pending:  # a registration challenge is single use
                user.pending.remove(enrollment)
            assert not expected, (
                f"CompleteEnrollment with the right proof was refused: {answer.reason}"
            )
            return
        assert correct, "CompleteEnrollment succeeded with a wrong proof"
        if enrollment in user.pending:
            user.pending.remove(enrollment)
        device = Device(
            id=answer.device.device_id,
            method=enrollment.method,
            owner=actor,
            secret=enrollment.secret,
            authenticator=authenticator,
            last_step=step if enrollment.secret else -1,
        )
        user.devices[device.id] = device
        self.log.completed[name][device.id] = enrollment
        self.log.successes.add(name)
        if answer.recovery_codes:
            user.codes = {a: [] for a in ACTORS}
            user.codes[actor] = list(answer.recovery_codes)

    async def op_verify(
        self,
        name: str,
        actor: str,
        proof: str,
        purpose: str,
        single_use: bool,
        pick: int,
        solo: bool,
    ) -> Token | None:
        """Challenge, then VerifySession (purpose "session") or IssueActionToken (the
        token it earned)."""
        assert self.before is not None
        user = self.users[name]
        device: Device | None = None
        code = ""
        if proof == "device":
            mine = [
                d
                for d in user.devices.values()
                if d.owner == actor and d.id in self.before.devices[name]
            ]
            if not mine:
                if actor == "user":
                    return None
                proof = "guess"
            else:
                device = mine[pick % len(mine)]
        if proof == "recovery":
            if not user.codes[actor]:
                return None
            code = user.codes[actor][pick % len(user.codes[actor])]
        if proof == "guess" and not self.policy.totp:
            proof = "guess_recovery"
        if device is not None:
            method = device.method
        elif proof == "guess":
            method = types.METHOD_TOTP
        else:  # a recovery code answers a challenge of any method
            method = types.METHOD_TOTP if self.policy.totp else types.METHOD_PASSKEY
        totp_code = self._fresh_totp(device) if device and device.secret else ""
        now = self.clock.now()
        actions = TOKEN_ACTIONS.get(purpose, ())
        expected = (
            solo
            and device is not None
            and self.policy.enabled(method)
            and self.before.open(name, now)
            and self.before.open_challenges[name] <= FEW_OPEN_CHALLENGES
            and (purpose == "session" or self.policy.mints(method, actions))
            and (single_use or not CREDENTIAL_ACTIONS & set(actions))
        )
        who = f"{name}/{actor} {proof} {purpose}"
        challenge = await self._rpc(
            "Challenge",
            self._mfa().Challenge(
                pb.ChallengeRequest(environment_id=self.env, user_id=name, method=method),
                timeout=CALL_TIMEOUT,
            ),
            {DISABLED, TOO_MANY_CHALLENGES} | GATES,
            who=who,
        )
        if isinstance(challenge, MfaServiceError):
            assert not expected, f"Challenge was refused: {challenge.reason}"
            return None
        assert self.policy.enabled(method), "Challenge succeeded for a disabled method"
        if device is not None and device.authenticator is not None:
            evidence = types.Proof(
                passkey_assertion_json=device.authenticator.assertion(
                    challenge.passkey_request_options_json
                )
            )
        elif device is not None:
            evidence = types.Proof(totp_code=totp_code)
        elif proof == "guess":
            evidence = types.Proof(totp_code=self._wrong_totp(user))
        elif proof == "guess_recovery":
            evidence = types.Proof(recovery_code=WRONG_RECOVERY_CODE)
        else:
            evidence = types.Proof(recovery_code=code)
        allowed = {FAILED, CHALLENGE_GONE, DISABLED} | GATES
        call: Awaitable[Any]
        if purpose == "session":
            call = self._mfa().VerifySession(
                pb.VerifySessionRequest(
                    environment_id=self.env,
                    user_id=name,
                    session_id=user.session,
                    challenge_id=challenge.challenge_id,
                    proof=evidence,
                ),
                timeout=CALL_TIMEOUT,
            )
        else:
            allowed |= {NOT_ALLOWED, NOT_PROTECTED}
            if not single_use and CREDENTIAL_ACTIONS & set(actions):
                allowed.add(INVALID)  # credential tokens may be refused as multi-use
            call = self._mfa().IssueActionToken(
                pb.IssueActionTokenRequest(
                    environment_id=self.env,
                    user_id=name,
                    challenge_id=challenge.challenge_id,
                    proof=evidence,
                    actions=list(actions),
                    single_use=single_use,
                ),
                timeout=CALL_TIMEOUT,
            )
        answer = await self._rpc(
            "VerifySession" if purpose == "session" else "IssueActionToken",
            call,
            allowed,
            who=who,
        )
        if code and code in user.codes[actor]:
            user.codes[actor].remove(code)  # used now, or dead already
        if isinstance(answer, MfaServiceError):
            if (answer.code, answer.reason) == FAILED:
                self.log.failures[name] += 1
                if proof in ("recovery", "guess_recovery"):
                    self.log.recovery_failures[name] += 1
            assert not expected, f"a fresh proof of {actor}'s own device failed: {answer.reason}"
            return None
        assert proof not in ("guess", "guess_recovery"), f"a guessed code verified: {who}"
        self.log.successes.add(name)
        if purpose == "session":
            return None
        token = Token(
            token=answer.token,
            jti=jti_of(answer.token),
            actions=frozenset(actions),
            single_use=single_use,
            device_id=device.id if device else None,
            owner=actor,
            expires_at=when(answer.expires_at),
        )
        user.tokens[actor].append(token)
        return token

    async def op_validate(self, name: str, actor: str, action: str, token_pick: int | None) -> None:
        user, kind = self.users[name], ACTIONS[action]
        token = self._pick_token(user, actor, kind, token_pick)
        self.reserved.discard(token.jti if token else "")  # the same token may race
        answer = await self._rpc(
            "ValidateActionToken",
            self.client.action_tokens_stub.ValidateActionToken(
                at_pb.ValidateActionTokenRequest(
                    environment_id=self.env,
                    user_id=name,
                    action=kind,
                    token=token.token if token else "",
                ),
                timeout=CALL_TIMEOUT,
            ),
            set(),
            who=f"{name}/{actor} {action} {'token' if token else 'no token'}",
        )
        self._spend(user, actor, token)
        self.notes.append(f"    {types.DecisionReason.Name(answer.reason)}")
        if answer.decision != types.DECISION_ALLOW:
            return
        if token is None:
            self.log.unprotected_allows.append((name, kind))
            return
        assert answer.reason == types.DECISION_REASON_TOKEN_VALID or not (
            self.policy.is_protected(kind)
        ), f"ALLOW with a token for a protected action: {answer.reason}"
        if answer.reason == types.DECISION_REASON_TOKEN_VALID:
            assert kind in token.actions, "a token was ALLOWed for an action it does not cover"
            self._used(user, token, kind)

    async def op_delete(
        self, name: str, actor: str, pick: int, token_pick: int | Token | None
    ) -> None:
        assert self.before is not None
        user = self.users[name]
        present = [d for d in user.devices if d in self.before.devices[name]]
        if not present:
            return
        device_id = present[pick % len(present)]
        token = self._pick_token(user, actor, UNLINK, token_pick)
        answer = await self._rpc(
            "DeleteDevice",
            self._mfa().DeleteDevice(
                pb.DeleteDeviceRequest(
                    environment_id=self.env,
                    user_id=name,
                    device_id=device_id,
                    action_token=token.token if token else "",
                ),
                timeout=CALL_TIMEOUT,
            ),
            {DEVICE_GONE, STEP_UP},
            who=f"{name}/{actor} {'token' if token else 'no token'}",
        )
        self._spend(user, actor, token)
        if isinstance(answer, MfaServiceError):
            return
        self.log.deleted[name].add(device_id)
        if token is None:
            self.log.tokenless_changes.append((name, "DeleteDevice succeeded"))
        else:
            self._used(user, token, UNLINK)

    async def op_regenerate(self, name: str, actor: str, token_pick: int | Token | None) -> None:
        user = self.users[name]
        token = self._pick_token(user, actor, REGENERATE, token_pick)
        answer = await self._rpc(
            "RegenerateRecoveryCodes",
            self._mfa().RegenerateRecoveryCodes(
                pb.RegenerateRecoveryCodesRequest(
                    environment_id=self.env,
                    user_id=name,
                    action_token=token.token if token else "",
                ),
                timeout=CALL_TIMEOUT,
            ),
            {NOT_ENROLLED, STEP_UP},
            who=f"{name}/{actor} {'token' if token else 'no token'}",
        )
        self._spend(user, actor, token)
        if isinstance(answer, MfaServiceError):
            return
        assert len(answer.recovery_codes) == MAX_LIVE_CODES
        user.codes = {a: [] for a in ACTORS}
        user.codes[actor] = list(answer.recovery_codes)
        if token is None:
            self.log.tokenless_changes.append((name, "RegenerateRecoveryCodes succeeded"))
        else:
            self._used(user, token, REGENERATE)

    async def op_reset(self, name: str) -> None:
        await self._rpc(
            "ResetUserMfa",
            self.client.admin.stub.ResetUserMfa(
                admin_pb.ResetUserMfaRequest(
                    environment_id=self.env, user_id=name, reason="model test"
                ),
                timeout=CALL_TIMEOUT,
            ),
            set(),
            who=name,
        )
        user = self.users[name]
        user.devices.clear()
        user.pending.clear()
        user.codes = {a: [] for a in ACTORS}
        self.log.reset.add(name)

    async def op_settings(self, settings_: types.Settings, paths: list[str]) -> None:
        answer = await self._rpc(
            "UpdateSettings",
            self.client.admin.stub.UpdateSettings(
                admin_pb.UpdateSettingsRequest(
                    settings=settings_, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                timeout=CALL_TIMEOUT,
            ),
            SETTINGS_REFUSALS,
            who=",".join(paths),
        )
        if not isinstance(answer, MfaServiceError):
            self.policy = Policy.of(answer.settings)

    # --- the rules -------------------------------------------------------------------

    @initialize(
        max_failed=st.sampled_from([3, 100]),
        max_totp=st.sampled_from([1, 3]),
        protect_sign=st.booleans(),
    )
    def create(self, max_failed: int, max_totp: int, protect_sign: bool) -> None:
        self._run(create_environment(self.client, self.env))
        settings_ = types.Settings(
            environment_id=self.env,
            protected_actions=[SIGN] if protect_sign else [],
            totp=types.TotpSettings(max_devices=max_totp),
            passkey=types.PasskeySettings(rp_id=RP_ID, allowed_origins=[ORIGIN]),
            lockout=types.LockoutSettings(
                max_failed_attempts=max_failed,
                lockout_duration=duration_pb2.Duration(seconds=60),
            ),
        )
        paths = [
            "protected_actions",
            "totp.max_devices",
            "passkey.rp_id",
            "passkey.allowed_origins",
            "lockout",
        ]
        self._step(lambda: self.op_settings(settings_, paths))
        assert self.policy.max_totp == max_totp, "the environment was not configured"

    @rule(
        user=st.sampled_from(USERS),
        actor=st.sampled_from(ACTORS),
        method=st.sampled_from(sorted(METHODS)),
        token=st.none() | st.integers(0, 3),
    )
    def enroll(self, user: str, actor: str, method: str, token: int | None) -> None:
        self._step(lambda: self.op_enroll(user, actor, method, token, solo=True))

    @rule(
        user=st.sampled_from(USERS),
        pick=st.integers(0, 3),
        correct=st.sampled_from([True, True, False]),
    )
    def complete(self, user: str, pick: int, correct: bool) -> None:
        self._step(lambda: self.op_complete(user, pick, correct, solo=True))

    @rule(
        user=st.sampled_from(USERS),
        actor=st.sampled_from(ACTORS),
        method=st.sampled_from(sorted(METHODS)),
        token=st.none() | st.integers(0, 3),
    )
    def enroll_and_complete(self, user: str, actor: str, method: str, token: int | None) -> None:
        self._step(lambda: self.op_enroll_and_complete(user, actor, method, token))

    @rule(
        user=st.sampled_from(USERS),
        actor=st.sampled_from(ACTORS),
        proof=st.sampled_from(["device", "device", "recovery", "guess", "guess_recovery"]),
        purpose=st.sampled_from(["session", *TOKEN_ACTIONS]),
        single_use=st.booleans(),
        pick=st.integers(0, 3),
    )
    def verify(
        self, user: str, actor: str, proof: str, purpose: str, single_use: bool, pick: int
    ) -> None:
        self._step(lambda: self.op_verify(user, actor, proof, purpose, single_use, pick, solo=True))

    @rule(
        user=st.sampled_from(USERS),
        actor=st.sampled_from(ACTORS),
        action=st.sampled_from(sorted(ACTIONS)),
        token=st.none() | st.integers(0, 3),
    )
    def validate(self, user: str, actor: str, action: str, token: int | None) -> None:
        self._step(lambda: self.op_validate(user, actor, action, token))

    @rule(
        user=st.sampled_from(USERS),
        actor=st.sampled_from(ACTORS),
        device=st.integers(0, 3),
        token=st.none() | st.integers(0, 3),
    )
    def delete_device(self, user: str, actor: str, device: int, token: int | None) -> None:
        self._step(lambda: self.op_delete(user, actor, device, token))

    @rule(
        user=st.sampled_from(USERS),
        actor=st.sampled_from(ACTORS),
        token=st.none() | st.integers(0, 3),
    )
    def regenerate(self, user: str, actor: str, token: int | None) -> None:
        self._step(lambda: self.op_regenerate(user, actor, token))

    @rule(
        profile=st.sampled_from(sorted(PROFILES)),
        protect_sign=st.booleans(),
        session_mfa=st.booleans(),
        max_failed=st.sampled_from([None, 3, 5, 100]),
    )
    def update_settings(
        self, profile: str, protect_sign: bool, session_mfa: bool, max_failed: int | None
    ) -> None:
        totp, passkey, methods = PROFILES[profile]
        settings_ = types.Settings(
            environment_id=self.env,
            totp_enabled=totp,
            passkey_enabled=passkey,
            action_methods=methods,
            protected_actions=[SIGN] if protect_sign else [],
            session_mfa_enabled=session_mfa,
            lockout=types.LockoutSettings(max_failed_attempts=max_failed or 0),
        )
        paths = [
            "totp_enabled",
            "passkey_enabled",
            "action_methods",
            "protected_actions",
            "session_mfa_enabled",
        ]
        if max_failed is not None:
            paths.append("lockout.max_failed_attempts")
        self._step(lambda: self.op_settings(settings_, paths))

    @rule(user=st.sampled_from(USERS))
    def reset(self, user: str) -> None:
        self._step(lambda: self.op_reset(user))

    @rule(seconds=st.sampled_from([30, 61, 61, 300, 1000, 7200, 90000]))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(timedelta(seconds=seconds))
        self._step()

    @rule(
        user=st.sampled_from(USERS),
        n=st.sampled_from([1, 3, 25, 100]),
        recovery=st.booleans(),
    )
    def guess_burst(self, user: str, n: int, recovery: bool) -> None:
        """The attacker sends ``n`` wrong codes at once."""
        proof = "guess_recovery" if recovery else "guess"
        self._step(
            *(
                (lambda: self.op_verify(user, "attacker", proof, "session", True, 0, solo=False))
                for _ in range(n)
            )
        )

    @rule(
        user=st.sampled_from(USERS),
        actor=st.sampled_from(ACTORS),
        change=st.sampled_from(sorted(STEP_UPS)),
        single_use=st.booleans(),
        pick=st.integers(0, 3),
    )
    def step_up(self, user: str, actor: str, change: str, single_use: bool, pick: int) -> None:
        """Earn a token for a credential change with a factor, then make the change."""
        self._step(lambda: self.op_step_up(user, actor, change, single_use, pick))

    @rule(
        user=st.sampled_from(USERS),
        calls=st.lists(
            st.tuples(st.sampled_from(RACE_CALLS), st.sampled_from(ACTORS), st.integers(0, 3)),
            min_size=2,
            max_size=4,
        ),
    )
    def race(self, user: str, calls: list[tuple[str, str, int]]) -> None:
        """Two to four calls for one user at once, each credential change with a token
        earned just before (single use for picks 0 and 1)."""
        self._step(lambda: self.op_race(user, calls))

    # --- composite calls -------------------------------------------------------------

    async def _mint(
        self, name: str, actor: str, purpose: str, single_use: bool, pick: int, solo: bool
    ) -> Token | None:
        """A token for ``purpose`` earned with a factor ``actor`` has (a device, else a
        recovery code; the attacker without either guesses)."""
        assert self.before is not None
        user = self.users[name]
        own = any(
            d.owner == actor and d.id in self.before.devices[name] for d in user.devices.values()
        )
        proof = "device" if own or not user.codes[actor] else "recovery"
        return await self.op_verify(name, actor, proof, purpose, single_use, pick, solo)

    async def op_step_up(
        self, name: str, actor: str, change: str, single_use: bool, pick: int
    ) -> None:
        token = await self._mint(name, actor, STEP_UPS[change], single_use, pick, solo=True)
        if token is None:
            return
        if change.startswith("add-"):
            method = change.removeprefix("add-")
            enrollment = await self.op_enroll(name, actor, method, token, solo=True)
            if enrollment is not None:
                await self.op_complete(name, 0, True, solo=True, only=enrollment)
        elif change == "delete":
            await self.op_delete(name, actor, pick, token)
        else:
            await self.op_regenerate(name, actor, token)

    async def op_race(self, name: str, calls: list[tuple[str, str, int]]) -> None:
        tokens: list[Token | None] = []
        for kind, actor, pick in calls:
            token = None
            if kind in STEP_UPS and not (kind.startswith("add-") and pick == 0):
                token = await self._mint(name, actor, STEP_UPS[kind], pick < 2, pick, solo=False)
            tokens.append(token)
        ops: list[Awaitable[Any]] = []
        for (kind, actor, pick), token in zip(calls, tokens, strict=True):
            if kind.startswith("add-"):
                method = kind.removeprefix("add-")
                ops.append(self.op_enroll(name, actor, method, token, solo=False))
            elif kind == "complete":
                ops.append(self.op_complete(name, pick, True, solo=False))
            elif kind == "delete":
                ops.append(self.op_delete(name, actor, pick, token or 0))
            elif kind == "regenerate":
                ops.append(self.op_regenerate(name, actor, token or 0))
            elif kind == "validate":
                ops.append(self.op_validate(name, actor, sorted(ACTIONS)[pick], 0))
            else:
                ops.append(self.op_verify(name, actor, "device", "session", True, pick, False))
        results = await asyncio.gather(*ops, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def test_the_model_holds(client: Client, clock: FakeClock, db: asyncpg.Connection) -> None:
    MfaModel.context = Context(asyncio.get_running_loop(), client, db, clock)
    try:
        await asyncio.to_thread(run_state_machine_as_test, MfaModel, settings=MODEL_SETTINGS)
    finally:
        MfaModel.context = None
