"""A wallet signer that asks mfa-service before every signature."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from examples.signer.approval import check_token_approval
from mfa.v1 import types_pb2
from mfa_client import Client, Validation


class SigningRefused(Exception):
    """mfa-service denied the signature; ``reason`` is the ``DecisionReason`` value."""

    def __init__(self, validation: Validation) -> None:
        super().__init__(f"signing refused: {validation.reason_name}")
        self.validation = validation

    @property
    def reason(self) -> types_pb2.DecisionReason.ValueType:
        return self.validation.reason

    @property
    def reason_name(self) -> str:
        return self.validation.reason_name


class Signer:
    """Signs messages with Ed25519 once ``ValidateActionToken`` allows ACTION_WAAS_SIGN."""

    def __init__(self, mfa_client: Client, environment_id: str, signing_key: Ed25519PrivateKey):
        self._mfa = mfa_client
        self._environment_id = environment_id
        self._key = signing_key

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    async def sign(
        self,
        user_id: str,
        message: bytes,
        mfa_token: str,
        session_id: str = "",
        *,
        passkey_public_key: bytes | None = None,
    ) -> bytes:
        """The signature of ``message``, or ``SigningRefused``.

        The digest binds the token to this exact message: a token the user got for
        another message is refused with ``PAYLOAD_MISMATCH``. A single-use token is
        consumed by the check, so it signs once.

        With ``passkey_public_key`` (the user's passkey, COSE), the token must first pass
        the offline check of a passkey approval of this message
        (``examples.signer.approval``), else ``ApprovalNotVerified`` and the service is
        not asked.
        """
        if passkey_public_key is not None:
            check_token_approval(mfa_token, message, passkey_public_key)
        validation = await self._mfa.action_tokens.validate(
            environment_id=self._environment_id,
            user_id=user_id,
            action=types_pb2.ACTION_WAAS_SIGN,
            token=mfa_token,
            payload_digest=hashlib.sha256(message).digest(),
            session_id=session_id,
        )
        if not validation.allowed:
            raise SigningRefused(validation)
        return self._key.sign(message)
