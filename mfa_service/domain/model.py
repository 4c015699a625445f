"""Vocabulary shared by every layer: methods, actions and identifiers."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

EnvironmentId = NewType("EnvironmentId", str)
UserId = NewType("UserId", str)


class Method(enum.Enum):
    """A kind of second factor (proto ``mfa.v1.Method`` without its prefix)."""

    TOTP = "totp"
    PASSKEY = "passkey"
    RECOVERY_CODE = "recovery_code"


class Action(enum.Enum):
    """An action that can demand a fresh second factor (proto ``mfa.v1.Action``)."""

    WAAS_EXPORT = "waas_export"
    WAAS_REFRESH = "waas_refresh"
    WAAS_SIGN = "waas_sign"
    WAAS_RESHARE = "waas_reshare"
    CREDENTIAL_LINK = "credential_link"
    CREDENTIAL_UNLINK = "credential_unlink"
    RECOVERY_CODES_REGENERATE = "recovery_codes_regenerate"


# DESIGN §2: adding or removing a factor, or replacing the recovery codes, always needs
# the factor the user already has; a stolen primary session must not be enough.
ALWAYS_PROTECTED_ACTIONS: frozenset[Action] = frozenset(
    {Action.CREDENTIAL_LINK, Action.CREDENTIAL_UNLINK, Action.RECOVERY_CODES_REGENERATE}
)
CONFIGURABLE_ACTIONS: frozenset[Action] = frozenset(Action) - ALWAYS_PROTECTED_ACTIONS


@dataclass(frozen=True, slots=True)
class Proof:
    """What the user presents: a TOTP code, a passkey assertion (JSON) or a recovery code."""

    method: Method
    value: str

    def __repr__(self) -> str:  # never print the secret part
        return f"Proof(method={self.method.name})"
