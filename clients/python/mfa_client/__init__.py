"""Typed async client for mfa-service (package ``mfa.v1`` holds the generated stubs).

    async with Client.connect("127.0.0.1:50051", insecure=True) as client:
        settings = await client.admin.create_environment("env-1")  # once, by an operator
        settings = await client.admin.get_settings("env-1")
        validation = await client.action_tokens.validate(
            environment_id="env-1", user_id="alice", action=ACTION_WAAS_SIGN, token=token
        )

Reads that fail with ``UNAVAILABLE`` are sent again by the channel (``READ_METHODS``);
``ValidateActionToken`` is retried under one idempotency key. Every failed call raises
``MfaServiceError`` carrying the status code, the ``mfa.v1.ErrorReason``, the request
id, field violations and any retry delay.

``approval_hash(...)`` computes an approval's hash (docs/approvals.md) as the service
does, from the ``Challenge`` request and response: what a passkey signs.
"""

from mfa_client._approvals import approval_hash
from mfa_client._client import (
    CHANNEL_OPTIONS,
    READ_METHODS,
    ActionTokenClient,
    AdminClient,
    Client,
    Validation,
)
from mfa_client._errors import FieldViolation, MfaServiceError

__all__ = [
    "CHANNEL_OPTIONS",
    "READ_METHODS",
    "ActionTokenClient",
    "AdminClient",
    "Client",
    "FieldViolation",
    "MfaServiceError",
    "Validation",
    "approval_hash",
]
