"""Login sessions that passed MFA."""

from __future__ import annotations

from datetime import datetime

from mfa_service.domain.model import EnvironmentId, UserId
from mfa_service.store.db import Connection

# Mark a session verified if ``{when}`` holds: by ``:session_method``, with ``:device``
# (None: a recovery code). A fragment of the statement that decides the verification
# (store.verifications).
MARK_VERIFIED = """
    INSERT INTO verified_sessions (environment_id, user_id, session_id, verified_at,
                                   method, device_id)
    SELECT :env::text, :user::text, :session_id::text, :now::timestamptz,
           :session_method::text, :device::uuid
    WHERE {when}
    ON CONFLICT (environment_id, user_id, session_id) DO UPDATE
        SET verified_at = EXCLUDED.verified_at, method = EXCLUDED.method,
            device_id = EXCLUDED.device_id
"""


async def verified_at(
    conn: Connection, env: EnvironmentId, user: UserId, session_id: str
) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT verified_at FROM verified_sessions "
        "WHERE environment_id = $1 AND user_id = $2 AND session_id = $3",
        env,
        user,
        session_id,
    )
    return value
