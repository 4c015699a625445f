"""Failed-attempt limiting (NIST SP 800-63B §3.2.2): counted per user, on every path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class AttemptState:
    """A user's consecutive failures and the end of their current lockout, if any."""

    failed_attempts: int
    locked_until: datetime | None

    def retry_after(self, now: datetime) -> timedelta | None:
        """How long the user must wait, or None when verification may be tried."""
        if self.locked_until is None or self.locked_until <= now:
            return None
        return self.locked_until - now
