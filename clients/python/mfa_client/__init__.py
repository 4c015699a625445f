"""Typed clients for mfa-service, async (``Client``) and blocking (``SyncClient``), with
one method per RPC of ``mfa.v1`` (the package ``mfa.v1`` holds the generated stubs):

    import hashlib

    from mfa.v1 import types_pb2
    from mfa_client import Client, MfaServiceError, Proof, SyncClient

    async with Client.connect("127.0.0.1:50051", insecure=True) as client:
        started = await client.mfa.enroll(
            environment_id="env-1", user_id="alice", method=types_pb2.METHOD_TOTP
        )
        # show started.totp.otpauth_uri as a QR code; the user types the first code
        await client.mfa.complete_enrollment(
            environment_id="env-1", user_id="alice",
            enrollment_id=started.enrollment_id, totp_code=code,
        )
        challenge = await client.mfa.challenge(
            environment_id="env-1", user_id="alice", method=types_pb2.METHOD_TOTP
        )
        try:
            issued = await client.mfa.issue_action_token(
                environment_id="env-1", user_id="alice",
                challenge_id=challenge.challenge_id, proof=Proof.totp(next_code),
                actions=[types_pb2.ACTION_WAAS_SIGN], single_use=True,
                payload_digest=hashlib.sha256(message).digest(),
            )
        except MfaServiceError as error:
            if error.reason == "ERROR_REASON_VERIFICATION_FAILED": ...

    with SyncClient.connect("127.0.0.1:50051", insecure=True) as client:  # Django, Flask
        validation = client.action_tokens.validate(
            environment_id="env-1", user_id="alice", action=types_pb2.ACTION_WAAS_SIGN,
            token=issued.token, payload_digest=hashlib.sha256(message).digest(),
        )
        if validation.allowed: ...

The two have the same services and methods: ``client.mfa`` (``MfaService``: the API
backend), ``client.admin`` (``AdminService``: the dashboard backend, operators),
``client.action_tokens`` (``ActionTokenService``: the wallet signer). Arguments are
keyword-only but for the environment id (and settings) of admin calls; results are
the generated messages (typed by their ``.pyi``, documented in ``protos/mfa/v1``),
unwrapped where the response holds one thing, or a ``Validation``.

- **Deadlines**: every call has one, 5 seconds unless ``connect(timeout=...)`` or
  ``client.mfa.with_options(timeout=...)`` says otherwise; ``watch_audit_events``, a
  stream without end, has none.
- **Errors**: every failed call raises ``MfaServiceError`` carrying the status code, the
  ``mfa.v1.ErrorReason`` name (``reason``), the request id, the field violations and any
  retry delay.
- **Retries**: only what is safe to send twice. Reads (``READ_METHODS``) failing with
  ``UNAVAILABLE`` are sent again by the channel; ``validate`` (``ValidateActionToken``)
  after ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` under one idempotency key, so a lost
  answer is answered again rather than consumed twice. Nothing else is resent.
- **Replicas**: a target that resolves to several addresses is balanced over
  (round_robin); ``CHANNEL_OPTIONS`` are the options of a channel made by hand.

``approval_hash(...)`` computes an approval's hash (docs/approvals.md) as the service
does, from the ``Challenge`` request and response: what a passkey signs.
"""

from mfa_client._approvals import approval_hash
from mfa_client._channel import CHANNEL_OPTIONS, DEFAULT_TIMEOUT_SECONDS, READ_METHODS
from mfa_client._client import ActionTokenClient, AdminClient, Client, MfaClient
from mfa_client._errors import FieldViolation, MfaServiceError
from mfa_client._service import ServiceClient
from mfa_client._sync import SyncActionTokenClient, SyncAdminClient, SyncClient, SyncMfaClient
from mfa_client._types import Proof, Validation

__all__ = [  # noqa: RUF022 (in the order of the reference page, make docs)
    "Client",
    "SyncClient",
    "MfaClient",
    "AdminClient",
    "ActionTokenClient",
    "SyncMfaClient",
    "SyncAdminClient",
    "SyncActionTokenClient",
    "ServiceClient",
    "Proof",
    "Validation",
    "MfaServiceError",
    "FieldViolation",
    "approval_hash",
    "DEFAULT_TIMEOUT_SECONDS",
    "READ_METHODS",
    "CHANNEL_OPTIONS",
]
