"""Failed-attempt limiting (NIST SP 800-63B §3.2.2, §5.2.2): counted per user, on every path.

The rule, stated once (the database's ``mfa_lockout_duration``, migration 0008, is the
same function and ``tests/test_lockout.py`` holds the two to each other):

- ``failed_attempts`` counts a user's consecutive failures, on every verify path, until
  a success (any path) or an administrator's reset. An ended lockout does not restart it.
- Each time it reaches a multiple of ``max_failed_attempts`` a lockout starts; the k-th
  of the streak lasts ``lockout_duration * 2^(k-1)``, at most ``LONGEST_LOCKOUT``.
- At ``HARD_LIMIT`` consecutive failures the authenticator app and passkeys stop
  verifying (``RecoveryRequired``); a recovery code still verifies (within the lockouts,
  which keep going) and its success ends the streak.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mfa_service.domain.settings import LOCKOUT_DURATION_RANGE

# NIST SP 800-63B §5.2.2: no more than 100 consecutive failed attempts on one account.
HARD_LIMIT = 100
# The longest lockout: the top of the configurable range.
LONGEST_LOCKOUT = LOCKOUT_DURATION_RANGE[1]
# Doubling stops here: the shortest base (1 min) passes 24 h after 11 doublings, and the
# cap keeps the arithmetic far from overflow however long a streak gets.
_MAX_DOUBLINGS = 20


def lockout_duration(failures: int, max_failed_attempts: int, base: timedelta) -> timedelta | None:
    """The lockout that the ``failures``-th consecutive failure starts, or None."""
    if failures <= 0 or max_failed_attempts <= 0 or failures % max_failed_attempts:
        return None
    k = failures // max_failed_attempts  # this is the streak's k-th lockout
    return min(base * (1 << min(k - 1, _MAX_DOUBLINGS)), LONGEST_LOCKOUT)


def recovery_required(failures: int) -> bool:
    """The authenticator app and passkeys no longer verify for this streak."""
    return failures >= HARD_LIMIT


@dataclass(frozen=True, slots=True)
class AttemptState:
    """A user's consecutive failures and the end of their latest lockout, if any."""

    failed_attempts: int
    locked_until: datetime | None

    def retry_after(self, now: datetime) -> timedelta | None:
        """How long the user must wait, or None when verification may be tried."""
        if self.locked_until is None or self.locked_until <= now:
            return None
        return self.locked_until - now

    @property
    def recovery_required(self) -> bool:
        return recovery_required(self.failed_attempts)
