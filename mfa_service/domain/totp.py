"""RFC 6238 time-based one-time passwords: secrets, otpauth URIs and step matching.

pyotp computes the codes; what it leaves to us is here: which time step a code
belongs to (replay protection is "never accept a step at or before the last one"),
the skew window, constant-time comparison and the input rules. Time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyotp

from mfa_service.domain.settings import TOTP_DIGITS, TOTP_PERIOD
from mfa_service.errors import InvalidArgument

SECRET_BYTES = 20  # RFC 4226 §4 R6: at least 128 bits, 160 recommended
MAX_ACCOUNT_NAME = 128


@dataclass(frozen=True, slots=True)
class TotpParameters:
    """SHA1, 6 digits, 30 s: the only parameters authenticator apps reliably honour."""

    digits: int = TOTP_DIGITS
    period_seconds: int = int(TOTP_PERIOD.total_seconds())
    digest: Callable[..., Any] = hashlib.sha1


DEFAULT = TotpParameters()


def new_secret() -> str:
    """A base32 secret of 160 bits from the OS CSPRNG (no padding)."""
    return pyotp.random_base32(length=32)


def check_label_part(value: str, field: str) -> str:
    """Key-Uri-Format: neither issuer nor account may contain ':' (it splits the label)."""
    if not value.strip():
        raise InvalidArgument.field(field, "must not be empty")
    if len(value) > MAX_ACCOUNT_NAME:
        raise InvalidArgument.field(field, f"at most {MAX_ACCOUNT_NAME} characters")
    if ":" in value or not value.isprintable():
        raise InvalidArgument.field(field, 'must not contain ":" or control characters')
    return value


def provisioning_uri(*, secret: str, account_name: str, issuer: str) -> str:
    """``otpauth://totp/Issuer:account?secret=...&issuer=Issuer`` (issuer in both places)."""
    return pyotp.TOTP(secret).provisioning_uri(name=account_name, issuer_name=issuer)


def time_step(at: datetime, params: TotpParameters = DEFAULT) -> int:
    """RFC 6238 §4.2: T = floor((unix time - T0) / X), T0 = 0."""
    return int(at.timestamp()) // params.period_seconds


def _generator(secret: str, params: TotpParameters) -> pyotp.TOTP:
    return pyotp.TOTP(
        secret, digits=params.digits, digest=params.digest, interval=params.period_seconds
    )


def code_at_step(secret: str, step: int, params: TotpParameters = DEFAULT) -> str:
    return _generator(secret, params).generate_otp(step)


def check_code_format(code: str, field: str, params: TotpParameters = DEFAULT) -> str:
    if len(code) != params.digits or not code.isascii() or not code.isdigit():
        raise InvalidArgument.field(field, f"must be {params.digits} digits")
    return code


def matching_step(
    *,
    secret: str,
    code: str,
    at: datetime,
    skew_steps: int,
    params: TotpParameters = DEFAULT,
) -> int | None:
    """The time step within ``at`` ± ``skew_steps`` whose code is ``code``, or None.

    Every candidate is computed and compared in constant time (no early exit that
    would tell which step matched); if two steps share a code, the latest wins, so a
    replay check against it is the strictest.
    """
    now_step = time_step(at, params)
    generator = _generator(secret, params)  # one secret decoded for the whole window
    given = code.encode()
    matched = None
    for step in range(now_step - skew_steps, now_step + skew_steps + 1):
        if hmac.compare_digest(generator.generate_otp(step).encode(), given):
            matched = step
    return matched
