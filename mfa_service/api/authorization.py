"""Per-service authorization of calling services under mutual TLS (DESIGN §6).

A caller's identity is its client certificate's first URI SAN, else its first DNS SAN
(what ``MFA_CALLER_ROLES`` names). Each role opens one mfa.v1 service; health and
reflection are open to every caller that completed the TLS handshake, i.e. presented a
certificate of the client CA. The check runs on every call, so it is a set lookup in
a table built once at start.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from grpc import aio
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from mfa.v1 import action_token_service_pb2, admin_service_pb2, mfa_service_pb2
from mfa_service.errors import CallerNotAuthorized, CallerUnauthenticated

ROLE_SERVICES: Mapping[str, str] = {
    "mfa": mfa_service_pb2.DESCRIPTOR.services_by_name["MfaService"].full_name,
    "action_tokens": action_token_service_pb2.DESCRIPTOR.services_by_name[
        "ActionTokenService"
    ].full_name,
    "admin": admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
}
OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})

_NOTHING: frozenset[str] = frozenset()


def peer_identity(context: aio.ServicerContext[Any, Any]) -> str | None:
    """The calling service's certificate identity: first URI SAN, else first DNS SAN.

    None over plaintext, without a client certificate, or for a certificate with
    neither (a common name alone is no identity: RFC 9525 dropped CN-IDs).
    """
    auth = context.auth_context()
    names = auth.get("peer_uri") or auth.get("peer_dns")
    if not names:
        return None
    name = next(iter(names)).decode(errors="replace")
    # It is logged and echoed: nothing that could forge or split a log line.
    return name if name.isascii() and name.isprintable() and " " not in name else None


class Authorizer:
    """Which services each caller identity may call, from ``MFA_CALLER_ROLES``."""

    def __init__(self, caller_roles: Mapping[str, Collection[str]]) -> None:
        unknown = {r for roles in caller_roles.values() for r in roles} - set(ROLE_SERVICES)
        if unknown:
            raise ValueError(f"unknown caller roles {sorted(unknown)}")
        self._services = {
            identity: frozenset(ROLE_SERVICES[role] for role in roles)
            for identity, roles in caller_roles.items()
        }

    @staticmethod
    def is_open(service: str) -> bool:
        return service in OPEN_SERVICES

    def check(self, service: str, identity: str | None) -> None:
        """Return if ``identity`` may call ``service``; raise the caller error otherwise."""
        if service in OPEN_SERVICES:
            return
        if identity is None:
            raise CallerUnauthenticated(
                "the client certificate carries no URI or DNS subject alternative name"
            )
        allowed = self._services.get(identity, _NOTHING)
        if service in allowed:
            return
        # An identity the CA vouches for but the roles do not list is authenticated and
        # granted nothing: PERMISSION_DENIED, as Envoy RBAC and Istio answer it.
        if not allowed:
            raise CallerNotAuthorized(f"caller {identity} has no role on this server")
        raise CallerNotAuthorized(f"caller {identity} may not call {service}")
