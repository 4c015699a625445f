"""The channel both clients open: balanced over replicas, reads retried by gRPC itself."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

DEFAULT_TIMEOUT_SECONDS = 5.0

# Calls are balanced over every address the target resolves to (gRPC's round_robin):
# "dns:///mfa.internal:50051" for a name with one address a replica, or a list such as
# "ipv4:10.0.0.1:50051,10.0.0.2:50051". Each call goes to the next ready replica, over
# a TLS connection of this client's own, so mutual TLS stays end to end.
#
# Reads change nothing, so gRPC itself sends one again when it fails with UNAVAILABLE:
# the replica was unreachable or restarting, or could not reach its database (during a
# PostgreSQL failover). A retry policy in the channel's service config (gRFC A6), so it
# holds for the generated stubs' reads too. Writes are never resent blindly: only
# ValidateActionToken is, by ActionTokenClient.validate, under one idempotency key.
READ_METHODS: tuple[tuple[str, str], ...] = (
    ("mfa.v1.MfaService", "GetStatus"),
    ("mfa.v1.MfaService", "ListDevices"),
    ("mfa.v1.AdminService", "ListEnvironments"),
    ("mfa.v1.AdminService", "GetSettings"),
    ("mfa.v1.AdminService", "ListAuditEvents"),
    ("mfa.v1.AdminService", "ListWebhooks"),
    ("mfa.v1.ActionTokenService", "GetJwks"),
)
READ_ATTEMPTS = 4
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method} for service, method in READ_METHODS
                ],
                "retryPolicy": {
                    "maxAttempts": READ_ATTEMPTS,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
# What Client.connect and SyncClient.connect give their channel; pass them to a channel
# made by hand.
CHANNEL_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG),
)

_Channel = TypeVar("_Channel")


def open_channel(
    target: str,
    *,
    insecure: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    plaintext: Callable[..., _Channel],
    tls: Callable[..., _Channel],
) -> _Channel:
    """A channel with ``CHANNEL_OPTIONS``, made by ``plaintext`` (``insecure``) or ``tls``:
    ``grpc``'s or ``grpc.aio``'s ``insecure_channel`` and ``secure_channel``."""
    options: Sequence[tuple[str, Any]] = list(CHANNEL_OPTIONS)
    if insecure:
        return plaintext(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    return tls(target, credentials, options=options)
