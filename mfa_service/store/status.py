"""What GetStatus reads about one user, in one statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mfa_service.domain.model import EnvironmentId, Method, UserId
from mfa_service.store.db import Connection


@dataclass(frozen=True, slots=True)
class UserSnapshot:
    device_methods: tuple[Method, ...]  # one per verified device, oldest first
    session_verified_at: datetime | None
    locked_until: datetime | None
    failed_attempts: int  # consecutive, since the last success
    recovery_codes_pending_ack: bool
    recovery_codes_remaining: int


# One statement is one snapshot: no transaction (and no BEGIN/COMMIT round trips) needed
# for the parts to agree with each other.
_SNAPSHOT = """
SELECT
    ARRAY(SELECT method FROM devices WHERE environment_id = $1 AND user_id = $2
          ORDER BY created_at, id) AS device_methods,
    (SELECT verified_at FROM verified_sessions
     WHERE environment_id = $1 AND user_id = $2 AND session_id = $3) AS session_verified_at,
    u.locked_until,
    coalesce(u.failed_attempts, 0) AS failed_attempts,
    coalesce(u.recovery_codes_pending_ack, false) AS recovery_codes_pending_ack,
    (SELECT count(*) FROM recovery_codes
     WHERE environment_id = $1 AND user_id = $2 AND used_at IS NULL) AS recovery_codes_remaining
FROM (SELECT) AS one
LEFT JOIN mfa_users u ON u.environment_id = $1 AND u.user_id = $2
"""


async def snapshot(
    conn: Connection, env: EnvironmentId, user: UserId, session_id: str | None
) -> UserSnapshot:
    row = await conn.fetchrow(_SNAPSHOT, env, user, session_id)
    if row is None:  # a SELECT over one row always yields it
        raise LookupError("status snapshot returned no row")
    return UserSnapshot(
        device_methods=tuple(Method[m] for m in row["device_methods"]),
        session_verified_at=row["session_verified_at"],
        locked_until=row["locked_until"],
        failed_attempts=row["failed_attempts"],
        recovery_codes_pending_ack=row["recovery_codes_pending_ack"],
        recovery_codes_remaining=row["recovery_codes_remaining"],
    )
