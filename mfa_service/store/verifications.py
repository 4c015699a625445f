"""The first statement of every verification: lock the user, take the challenge, and
read the devices that may answer it, in one round trip."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from mfa_service.domain.devices import Challenge, Device
from mfa_service.domain.lockout import AttemptState
from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.store.challenges import TAKEN_COLUMNS, challenge_from_row
from mfa_service.store.db import Connection
from mfa_service.store.devices import COLUMNS as DEVICE_COLUMNS
from mfa_service.store.devices import device_from_row
from mfa_service.store.users import LOCK_FOR_VERIFICATION


@dataclass(frozen=True, slots=True)
class Begun:
    attempts: AttemptState
    challenge: Challenge | None  # None: unknown, another user's, expired, used, or locked out
    devices: list[Device]  # the user's devices of the challenge's method


# ``u`` locks the user's row for the transaction (so one user's verifications run one at
# a time, and the failure count is exact) and starts a fresh count after an expired
# lockout. ``c`` takes the challenge out, so it is used at most once, but not while the
# user is locked out. The devices are read in the statement's snapshot, taken before the
# lock was granted: a concurrent verification may since have accepted a TOTP step or
# moved a passkey's counter. The writes that matter re-check the row as it is then
# (devices.accept_totp_step, devices.advance_sign_count), so a stale read can only make
# them refuse, never accept twice.
_BEGIN = f"""
WITH u AS ({LOCK_FOR_VERIFICATION}),
c AS (
    DELETE FROM challenges
    WHERE id = $4 AND environment_id = $1 AND user_id = $2 AND expires_at > $3
      AND NOT EXISTS (SELECT 1 FROM u WHERE locked_until > $3)
    RETURNING {TAKEN_COLUMNS}
)
SELECT u.failed_attempts AS attempts_failed, u.locked_until AS attempts_locked_until,
       c.id AS challenge_id, c.method AS challenge_method,
       c.device_id AS challenge_device_id, c.created_at AS challenge_created_at,
       c.expires_at AS challenge_expires_at,
       c.webauthn_challenge AS challenge_webauthn_challenge,
       d.*
FROM u
LEFT JOIN c ON true
LEFT JOIN LATERAL (
    SELECT {DEVICE_COLUMNS} FROM devices
    WHERE environment_id = $1 AND user_id = $2 AND method = c.method
    ORDER BY created_at, id
) d ON true
"""  # noqa: S608 (constant SQL fragments)


async def begin(
    conn: Connection, env: EnvironmentId, user: UserId, challenge_id: UUID, *, now: datetime
) -> Begun:
    rows = await conn.fetch(_BEGIN, env, user, now, challenge_id)
    if not rows:  # INSERT ... ON CONFLICT DO UPDATE always returns the row
        raise LookupError("mfa_users upsert returned no row")
    first = rows[0]
    attempts = AttemptState(first["attempts_failed"], first["attempts_locked_until"])
    if first["challenge_id"] is None:
        return Begun(attempts, None, [])
    challenge = challenge_from_row(first, env, user, prefix="challenge_")
    devices = [device_from_row(r) for r in rows if r["id"] is not None]
    return Begun(attempts, challenge, devices)
