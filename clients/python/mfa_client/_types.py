"""The values the client adds to the generated messages: a proof to build, a decision to read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mfa.v1 import types_pb2


@dataclass(frozen=True, slots=True)
class Proof:
    """What the user presents to answer a challenge: one of ``Proof.totp(code)``,
    ``Proof.passkey(assertion)`` or ``Proof.recovery_code(code)``.

    ``VerifySession`` and ``IssueActionToken`` take it (or an ``mfa.v1.Proof`` message).
    The code or assertion is left out of ``repr``, so a proof in a log line says what kind
    it was and nothing that would pass a challenge.
    """

    kind: Literal["totp_code", "passkey_assertion_json", "recovery_code"]
    """The ``mfa.v1.Proof`` field it fills."""
    value: str = field(repr=False)

    @classmethod
    def totp(cls, code: str) -> Proof:
        """Six digits from the user's authenticator app, e.g. ``"123456"``."""
        return cls("totp_code", code)

    @classmethod
    def passkey(cls, assertion: str | Mapping[str, Any]) -> Proof:
        """The browser's ``PublicKeyCredential`` from ``navigator.credentials.get()``
        (``toJSON()``), as its JSON text or the parsed object."""
        return cls(
            "passkey_assertion_json",
            assertion if isinstance(assertion, str) else json.dumps(assertion),
        )

    @classmethod
    def recovery_code(cls, code: str) -> Proof:
        """One of the user's recovery codes, as shown to them."""
        return cls("recovery_code", code)

    def to_proto(self) -> types_pb2.Proof:
        """The ``mfa.v1.Proof`` message."""
        return types_pb2.Proof(**{self.kind: self.value})


def proof_message(proof: Proof | types_pb2.Proof) -> types_pb2.Proof:
    return proof.to_proto() if isinstance(proof, Proof) else proof


@dataclass(frozen=True, slots=True)
class Validation:
    """A ``ValidateActionToken`` decision: ``allowed`` only on ``DECISION_ALLOW``."""

    decision: types_pb2.Decision.ValueType
    reason: types_pb2.DecisionReason.ValueType

    @property
    def allowed(self) -> bool:
        """The action may run now (a single-use token was consumed for it)."""
        return self.decision == types_pb2.DECISION_ALLOW

    @property
    def reason_name(self) -> str:
        """E.g. ``"DECISION_REASON_TOKEN_ALREADY_USED"``."""
        return types_pb2.DecisionReason.Name(self.reason)
