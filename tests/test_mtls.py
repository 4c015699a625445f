"""Mutual TLS and per-service authorization: real certificates, a real server, no mocks.

A session fixture makes a small PKI with ``cryptography``: a client CA, the server's
certificate (SAN DNS localhost, IP 127.0.0.1), a client certificate per calling service,
and the ones that must be refused: a certificate of another CA, an identity the roles
do not list, and a certificate whose only name is its common name.

Decision documented here and in the README: a certificate of the client CA whose
identity is not in ``MFA_CALLER_ROLES`` is authenticated but granted nothing, so it
gets PERMISSION_DENIED (``ERROR_REASON_CALLER_NOT_AUTHORIZED``), as Envoy RBAC and
Istio answer it; UNAUTHENTICATED (``ERROR_REASON_CALLER_UNAUTHENTICATED``) is for a
certificate without a URI or DNS SAN identity. No client certificate, or one of another
CA, fails the TLS handshake: the client sees UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from helpers import FakeClock, eventually, refused, started_app, venv_binary
from mfa.v1 import (
    action_token_service_pb2,
    admin_service_pb2,
    mfa_service_pb2,
    mfa_service_pb2_grpc,
    types_pb2,
)
from mfa_client import Client, MfaServiceError
from mfa_service import app as app_module
from mfa_service.api.authorization import ROLE_SERVICES
from mfa_service.config import TlsConfig
from mfa_service.crypto import KeyRing
from typescript_client import compile_client, node_binary, run_process

ENV = "env-mtls"
API_BACKEND = "spiffe://corp/api-backend"
SIGNER = "spiffe://corp/signer"
DASHBOARD = "spiffe://corp/dashboard"
OPS = "ops.corp.internal"  # a DNS SAN identity holding two roles
NOT_AUTHORIZED = (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_CALLER_NOT_AUTHORIZED")
UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, "ERROR_REASON_CALLER_UNAUTHENTICATED")
CALLER_ROLES = {
    API_BACKEND: frozenset({"mfa"}),
    SIGNER: frozenset({"action_tokens"}),
    DASHBOARD: frozenset({"admin"}),
    OPS: frozenset({"mfa", "action_tokens"}),
}
# The same table as the operator writes it.
CALLER_ROLES_ENV = ",".join(f"{k}={'+'.join(sorted(v))}" for k, v in CALLER_ROLES.items())

# Client certificates: name -> (issuing CA, subject alternative names, common name).
SPIFFE = x509.UniformResourceIdentifier
CLIENTS: dict[str, tuple[str, list[x509.GeneralName], str]] = {
    "api-backend": ("ca", [SPIFFE(API_BACKEND)], "api-backend"),
    "signer": ("ca", [SPIFFE(SIGNER)], "signer"),
    "dashboard": ("ca", [SPIFFE(DASHBOARD)], "dashboard"),
    "ops": ("ca", [x509.DNSName(OPS)], "ops"),
    # The URI SAN is the identity even when the DNS SAN has roles.
    "uri-first": ("ca", [x509.DNSName(OPS), SPIFFE("spiffe://corp/batch")], "batch"),
    "unlisted": ("ca", [SPIFFE("spiffe://corp/intruder")], "intruder"),
    # A listed identity, but only as common name: not an identity (RFC 9525).
    "cn-only": ("ca", [], DASHBOARD),
    # The dashboard's identity, signed by a CA the server does not trust.
    "foreign": ("other-ca", [SPIFFE(DASHBOARD)], "dashboard"),
}

# What each certificate may call: role -> allowed (None: refused in the handshake).
ALLOWED: dict[str, set[str]] = {
    "api-backend": {"mfa"},
    "signer": {"action_tokens"},
    "dashboard": {"admin"},
    "ops": {"mfa", "action_tokens"},
    "uri-first": set(),
    "unlisted": set(),
    "cn-only": set(),
}
GRPCURL_STATUS_EXIT_BASE = 64


# --- the PKI -----------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    cert_file: Path
    key_file: Path

    @property
    def cert(self) -> bytes:
        return self.cert_file.read_bytes()

    @property
    def key(self) -> bytes:
        return self.key_file.read_bytes()


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server: Credentials
    clients: dict[str, Credentials]

    @property
    def ca(self) -> bytes:
        return self.ca_file.read_bytes()

    def tls_config(self) -> TlsConfig:
        return TlsConfig(self.server.cert_file, self.server.key_file, self.ca_file, CALLER_ROLES)

    def env(self) -> dict[str, str]:
        return {
            "MFA_TLS_CERT_FILE": str(self.server.cert_file),
            "MFA_TLS_KEY_FILE": str(self.server.key_file),
            "MFA_TLS_CLIENT_CA_FILE": str(self.ca_file),
            "MFA_CALLER_ROLES": CALLER_ROLES_ENV,
        }


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Issuer | None,
    *,
    sans: list[x509.GeneralName] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    is_ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(key if issuer is None else issuer.key, hashes.SHA256())


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Credentials:
    credentials = Credentials(directory / f"{name}.pem", directory / f"{name}.key")
    credentials.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    credentials.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return credentials


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    issuers = {}
    for ca_name in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate(f"mfa test {ca_name}", key, None)
        _write(directory, ca_name, ca, key)
        issuers[ca_name] = _Issuer(ca.subject, key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server_cert = _certificate(
        "mfa-service",
        server_key,
        issuers["ca"],
        sans=server_sans,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    clients = {}
    for name, (ca_name, sans, common_name) in CLIENTS.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(
            common_name, key, issuers[ca_name], sans=sans, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )
        clients[name] = _write(directory, f"client-{name}", cert, key)
    return Pki(
        ca_file=directory / "ca.pem",
        server=_write(directory, "server", server_cert, server_key),
        clients=clients,
    )


# --- a server with mutual TLS, and its callers ---------------------------------------


@pytest.fixture
async def mtls_app(
    database_url: str, clock: FakeClock, pki: Pki
) -> AsyncIterator[app_module.Application]:
    async with started_app(database_url, clock, tls=pki.tls_config()) as application:
        # The operator creates the environment the tests use, as the dashboard backend.
        async with _connect(pki, f"127.0.0.1:{application.port}", "dashboard") as dashboard:
            await dashboard.admin.create_environment(ENV)
        yield application


def _connect(pki: Pki, target: str, name: str | None) -> Client:
    """A client trusting the test CA, presenting the named client certificate (or none)."""
    if name is None:
        return Client.connect(target, root_certificates=pki.ca)
    credentials = pki.clients[name]
    return Client.connect(
        target,
        root_certificates=pki.ca,
        private_key=credentials.key,
        certificate_chain=credentials.cert,
    )


@asynccontextmanager
async def connect(pki: Pki, app: app_module.Application, name: str | None) -> AsyncIterator[Client]:
    async with _connect(pki, f"127.0.0.1:{app.port}", name) as client:
        yield client


async def _call(client: Client, role: str) -> None:
    """One cheap call to the service the role opens."""
    if role == "mfa":
        try:
            await client.mfa_stub.GetStatus(
                mfa_service_pb2.GetStatusRequest(environment_id=ENV, user_id="alice"), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            raise MfaServiceError.from_rpc_error(error) from None
    elif role == "action_tokens":
        validation = await client.action_tokens.validate(
            environment_id=ENV, user_id="alice", action=types_pb2.ACTION_WAAS_SIGN
        )
        assert validation.reason_name == "DECISION_REASON_MFA_NOT_REQUIRED"
    else:
        assert (await client.admin.get_settings(ENV)).environment_id == ENV


async def _health(client: Client) -> int:
    response = await health_pb2_grpc.HealthStub(client.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    return int(response.status)


async def _reflected_services(client: Client) -> set[str]:
    call = reflection_pb2_grpc.ServerReflectionStub(client.channel).ServerReflectionInfo(timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    assert isinstance(response, reflection_pb2.ServerReflectionResponse)
    return {service.name for service in response.list_services_response.service}


# --- who may call what --------------------------------------------------------------


def test_the_only_streaming_rpc_of_a_role_service_is_watch_audit_events() -> None:
    """A streaming mfa.v1 RPC is authorized as its service's unary calls are (below)."""
    streaming = set()
    for module in (mfa_service_pb2, action_token_service_pb2, admin_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name in ROLE_SERVICES.values()
            for method in service.methods:
                assert not method.client_streaming, method.full_name
                if method.server_streaming:
                    streaming.add(method.full_name)
    assert streaming == {"mfa.v1.AdminService.WatchAuditEvents"}


async def _watch(client: Client) -> str:
    """The first event of ENV's audit stream (ENVIRONMENT_CREATED), then hang up."""
    stream = client.admin.watch_audit_events(ENV)
    try:
        response = await anext(stream)
    finally:
        await stream.aclose()
    return admin_service_pb2.AuditEventType.Name(response.event.type)


@pytest.mark.parametrize("name", ["dashboard", "api-backend", "signer", "ops", "unlisted"])
async def test_only_the_admin_role_may_watch_audit_events(
    name: str, mtls_app: app_module.Application, pki: Pki
) -> None:
    async with connect(pki, mtls_app, name) as client:
        if "admin" in ALLOWED[name]:
            assert await _watch(client) == "AUDIT_EVENT_TYPE_ENVIRONMENT_CREATED"
        else:
            error = await refused(_watch(client), *NOT_AUTHORIZED)
            assert error.request_id


async def test_a_nameless_certificate_may_not_watch_audit_events(
    mtls_app: app_module.Application, pki: Pki
) -> None:
    async with connect(pki, mtls_app, "cn-only") as client:
        await refused(_watch(client), *UNAUTHENTICATED)


@pytest.mark.parametrize("name", list(ALLOWED))
async def test_each_caller_reaches_exactly_its_services(
    name: str, mtls_app: app_module.Application, pki: Pki
) -> None:
    async with connect(pki, mtls_app, name) as client:
        for role in ROLE_SERVICES:
            if role in ALLOWED[name]:
                await _call(client, role)
                continue
            error = await refused(
                _call(client, role),
                *(UNAUTHENTICATED if name == "cn-only" else NOT_AUTHORIZED),
            )
            assert error.request_id, role

        # Health and reflection: open to every certificate of the client CA.
        assert await _health(client) == health_pb2.HealthCheckResponse.SERVING
        assert set(ROLE_SERVICES.values()) <= await _reflected_services(client)


async def test_the_signer_calling_admin_service_is_denied_and_logged(
    mtls_app: app_module.Application, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async with connect(pki, mtls_app, "signer") as client:
        with caplog.at_level(logging.INFO, logger="mfa_service.rpc"):
            denied = await refused(client.admin.get_settings(ENV), *NOT_AUTHORIZED)
            validation = await client.action_tokens.validate(
                environment_id=ENV, user_id="alice", action=types_pb2.ACTION_WAAS_SIGN
            )
    assert denied.message == f"caller {SIGNER} may not call mfa.v1.AdminService"
    assert validation.allowed
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith(
            f"rpc method=/mfa.v1.AdminService/GetSettings caller={SIGNER} status=PERMISSION_DENIED"
        )
        for line in lines
    ), lines
    assert any(
        line.startswith(
            f"rpc method=/mfa.v1.ActionTokenService/ValidateActionToken caller={SIGNER} status=OK"
        )
        for line in lines
    ), lines


async def test_unlisted_and_nameless_certificates_are_told_why(
    mtls_app: app_module.Application, pki: Pki
) -> None:
    async with connect(pki, mtls_app, "unlisted") as client:
        unlisted = await refused(client.admin.get_settings(ENV), *NOT_AUTHORIZED)
    assert unlisted.message == "caller spiffe://corp/intruder has no role on this server"

    async with connect(pki, mtls_app, "cn-only") as client:
        nameless = await refused(client.admin.get_settings(ENV), *UNAUTHENTICATED)
    assert "no URI or DNS subject alternative name" in nameless.message


@pytest.mark.parametrize("name", [None, "foreign"], ids=["no-certificate", "another-ca"])
async def test_the_handshake_refuses_callers_without_a_certificate_of_the_ca(
    name: str | None, mtls_app: app_module.Application, pki: Pki
) -> None:
    async with connect(pki, mtls_app, name) as client:
        # The transport refused (no ErrorInfo): the service never saw it.
        await refused(client.admin.get_settings(ENV), grpc.StatusCode.UNAVAILABLE, "")
        with pytest.raises(grpc.aio.AioRpcError) as health:
            await _health(client)
        assert health.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_is_refused_by_a_tls_server(
    mtls_app: app_module.Application,
) -> None:
    async with Client.connect(f"127.0.0.1:{mtls_app.port}", insecure=True) as client:
        await refused(client.admin.get_settings(ENV), grpc.StatusCode.UNAVAILABLE, "")


async def test_the_certificate_identity_is_the_audit_events_caller(
    mtls_app: app_module.Application, pki: Pki, db: asyncpg.Connection
) -> None:
    async with connect(pki, mtls_app, "dashboard") as client:
        await client.admin.update_settings(
            types_pb2.Settings(environment_id=ENV, session_mfa_enabled=True),
            ["session_mfa_enabled"],
        )
    rows = await db.fetch(
        "SELECT type, caller, request_id FROM audit_events WHERE environment_id = $1 ORDER BY id",
        ENV,
    )
    assert [(r["type"], r["caller"]) for r in rows] == [
        ("ENVIRONMENT_CREATED", DASHBOARD),  # by mtls_app
        ("SETTINGS_CHANGED", DASHBOARD),
    ]
    assert all(r["request_id"] for r in rows)


# --- grpcurl, as an operator uses it ---------------------------------------------------


async def grpcurl(
    pki: Pki, port: int, name: str, *args: str, data: dict[str, object] | None = None
) -> tuple[int, str, str]:
    credentials = pki.clients[name]
    command = [
        venv_binary("grpcurl"),
        "-cacert",
        str(pki.ca_file),
        "-cert",
        str(credentials.cert_file),
        "-key",
        str(credentials.key_file),
        "-max-time",
        "10",
    ]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [f"127.0.0.1:{port}", *args]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_grpcurl_with_a_client_certificate(
    mtls_app: app_module.Application, pki: Pki
) -> None:
    code, out, err = await grpcurl(pki, mtls_app.port, "dashboard", "list")
    assert code == 0, err
    assert set(ROLE_SERVICES.values()) <= set(out.split())

    code, out, err = await grpcurl(
        pki,
        mtls_app.port,
        "dashboard",
        "mfa.v1.AdminService/GetSettings",
        data={"environment_id": ENV},
    )
    assert code == 0, err
    assert json.loads(out)["settings"]["environment_id"] == ENV

    code, out, err = await grpcurl(
        pki,
        mtls_app.port,
        "signer",
        "mfa.v1.AdminService/GetSettings",
        data={"environment_id": ENV},
    )
    assert code == GRPCURL_STATUS_EXIT_BASE + grpc.StatusCode.PERMISSION_DENIED.value[0], err
    assert "Code: PermissionDenied" in err
    assert "ERROR_REASON_CALLER_NOT_AUTHORIZED" in err


# --- the TypeScript client, as the signer runs validate.js ------------------------------


@pytest.fixture(scope="module")
def validate_script() -> Path:
    return compile_client() / "validate.js"


async def node_validate(script: Path, pki: Pki, port: int, name: str) -> tuple[int, str, str]:
    """clients/typescript's validate.js over mutual TLS with the named client certificate."""
    credentials = pki.clients[name]
    tls = {
        "MFA_TLS_CA_FILE": str(pki.ca_file),
        "MFA_TLS_CERT_FILE": str(credentials.cert_file),
        "MFA_TLS_KEY_FILE": str(credentials.key_file),
    }
    args = (f"127.0.0.1:{port}", ENV, "alice", "ACTION_WAAS_SIGN")
    return await run_process(node_binary(), str(script), *args, env=tls)


async def test_the_typescript_client_over_mutual_tls(
    mtls_app: app_module.Application, pki: Pki, validate_script: Path
) -> None:
    code, out, err = await node_validate(validate_script, pki, mtls_app.port, "signer")
    assert code == 0, err
    assert json.loads(out) == {
        "decision": "DECISION_ALLOW",
        "reason": "DECISION_REASON_MFA_NOT_REQUIRED",
    }
    # The dashboard's certificate is authenticated but not the signer's role.
    code, out, err = await node_validate(validate_script, pki, mtls_app.port, "dashboard")
    assert (code, out) == (1, "")
    assert err.startswith(
        "ValidateActionToken failed: PERMISSION_DENIED ERROR_REASON_CALLER_NOT_AUTHORIZED: "
    ), err


# --- the real process, configured from the environment ---------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def _wait_serving(process: asyncio.subprocess.Process, client: Client, stderr: Path) -> None:
    async def serving() -> bool:
        if process.returncode is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{_text(stderr)}")
        with suppress(grpc.aio.AioRpcError):
            return bool(await _health(client) == health_pb2.HealthCheckResponse.SERVING)
        return False

    await eventually(
        serving, within=60, interval=0.1, what=lambda: f"SERVING over mTLS:\n{_text(stderr)}"
    )


@pytest.fixture
async def started_processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes to kill should a test fail before it stops them."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _serve_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    """This process's environment without its MFA settings, plus a server's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MFA_", "DATABASE_"))}
    env.update(
        DATABASE_URL=database_url,
        MFA_ENCRYPTION_KEYS=KeyRing.generate_entry("k1"),
        MFA_LISTEN_ADDR=f"127.0.0.1:{port}",
        **extra,
    )
    return env


async def _serve(env: dict[str, str], tmp_path: Path) -> tuple[asyncio.subprocess.Process, Path]:
    """``mfa-service serve`` started, its stderr going to the returned file."""
    stderr_path = tmp_path / "server.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mfa_service", "serve",
            env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    return process, stderr_path


async def test_serve_process_with_mutual_tls_from_the_environment(
    tmp_path: Path,
    database_url: str,
    pki: Pki,
    started_processes: list[asyncio.subprocess.Process],
) -> None:
    port = _free_port()
    env = _serve_env(database_url, port, **pki.env())
    process, stderr_path = await _serve(env, tmp_path)
    started_processes.append(process)
    target = f"127.0.0.1:{port}"
    async with (
        _connect(pki, target, "api-backend") as api_backend,
        _connect(pki, target, "signer") as signer,
        _connect(pki, target, "dashboard") as dashboard,
    ):
        await _wait_serving(process, api_backend, stderr_path)
        await dashboard.admin.create_environment(ENV)
        stub = mfa_service_pb2_grpc.MfaServiceStub(api_backend.channel)
        status = await stub.GetStatus(
            mfa_service_pb2.GetStatusRequest(environment_id=ENV, user_id="alice"), timeout=5
        )
        assert not status.enrollment_required
        await refused(signer.admin.get_settings(ENV), *NOT_AUTHORIZED)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0

    log = _text(stderr_path)
    assert "(mutual TLS, 4 caller identities with roles)" in log
    assert f"method=/mfa.v1.MfaService/GetStatus caller={API_BACKEND} status=OK" in log
    assert f"caller={SIGNER} status=PERMISSION_DENIED" in log
    assert "Traceback" not in log


async def test_serve_process_with_server_only_tls_needs_the_opt_in_and_warns(
    tmp_path: Path,
    database_url: str,
    pki: Pki,
    started_processes: list[asyncio.subprocess.Process],
) -> None:
    """TLS without a client CA opens every service to anyone: refused unless asked for."""
    port = _free_port()
    env = _serve_env(
        database_url,
        port,
        MFA_TLS_CERT_FILE=str(pki.server.cert_file),
        MFA_TLS_KEY_FILE=str(pki.server.key_file),
    )
    refused = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mfa_service", "serve",
        env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    started_processes.append(refused)
    stdout, stderr = await asyncio.wait_for(refused.communicate(), 30)
    assert refused.returncode == 2
    assert stdout == b""
    [line] = stderr.decode().splitlines()
    assert line.startswith("mfa-service: configuration error: MFA_TLS_CLIENT_CA_FILE: ")

    env["MFA_ALLOW_TLS_WITHOUT_CLIENT_AUTH"] = "true"
    process, stderr_path = await _serve(env, tmp_path)
    started_processes.append(process)
    async with _connect(pki, f"127.0.0.1:{port}", None) as anyone:
        await _wait_serving(process, anyone, stderr_path)
        # Anyone reaches AdminService, even to create an environment: hence the opt-in.
        assert (await anyone.admin.create_environment(ENV)).environment_id == ENV
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0

    log = _text(stderr_path)
    assert "(TLS)" in log
    assert (
        "TLS without client certificates: callers are neither authenticated nor authorized" in log
    )
    warnings = [line for line in log.splitlines() if "TLS without client certificates" in line]
    assert len(warnings) == 1 and '"level": "WARNING"' in warnings[0], warnings
