"""Prometheus metrics of the calls, recorded by the interceptor from each call's outcome.

Per RPC, under the names and labels of go-grpc-prometheus (grpc-ecosystem), which
Grafana's gRPC dashboards query: ``grpc_server_started_total``,
``grpc_server_handled_total`` (with ``grpc_code``), ``grpc_server_handling_seconds``
(a histogram; with ``grpc_code`` too, which dashboards sum away), and
``grpc_server_msg_received_total``/``grpc_server_msg_sent_total``, each labelled
``grpc_type`` (``unary``, ``server_stream``, ...), ``grpc_service`` and ``grpc_method``.
Beside them ``mfa_rpc_in_flight`` (calls started and not ended), ``mfa_build_info``
(value 1; the version in its labels) and the service's own: token validations,
verifications, lockouts, issued tokens, validation batches and the database pool. No
label holds a user, a token or a code: only method names, codes, and the decisions and
reasons the service defines.

Each application has its own registry (tests run several in one process); the metrics
endpoint serves it. Label children are looked up once per method and status, then
cached: the hot path is dict lookups and the increments themselves.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mfa.v1 import types_pb2

VALIDATE_METHOD = "/mfa.v1.ActionTokenService/ValidateActionToken"
ISSUE_METHOD = "/mfa.v1.MfaService/IssueActionToken"
# Calls that check a proof (a TOTP code, a passkey assertion, a recovery code).
VERIFY_METHODS = frozenset({"/mfa.v1.MfaService/VerifySession", ISSUE_METHOD})
_PROOF_METHODS = {
    "totp_code": "totp",
    "passkey_assertion_json": "passkey",
    "recovery_code": "recovery_code",
}
# Fast calls (a validation is ~1 ms) up to the database's 5 s statement bound.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class PoolCollector(Collector):
    """``mfa_db_pool_size`` and ``mfa_db_pool_idle`` of an asyncpg pool, read at scrape
    time (``get_size``/``get_idle_size`` only count; safe from the server's thread)."""

    def __init__(self, size: Callable[[], int], idle: Callable[[], int], max_size: int) -> None:
        self._size, self._idle, self._max = size, idle, max_size

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "mfa_db_pool_size", "Open connections of the database pool", value=self._size()
        )
        yield GaugeMetricFamily(
            "mfa_db_pool_idle", "Idle connections of the database pool", value=self._idle()
        )
        yield GaugeMetricFamily(
            "mfa_db_pool_max_size", "Most connections the pool may open", value=self._max
        )


# grpc_type, as go-grpc-prometheus names each kind of call.
UNARY = "unary"
SERVER_STREAM = "server_stream"
CLIENT_STREAM = "client_stream"
BIDI_STREAM = "bidi_stream"
_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


@dataclass
class MethodMetrics:
    """One method's series, label children cached. ``method``: ``/package.Service/Name``."""

    method: str
    started: Any  # Counter children, and the in-flight gauge's
    received: Any
    sent: Any
    in_flight: Any
    _handled: Counter
    _handling: Histogram
    _labels: tuple[str, str, str]
    _by_code: dict[grpc.StatusCode, tuple[Any, Any]] = field(default_factory=dict)

    def start(self) -> None:
        self.started.inc()
        self.in_flight.inc()

    def end(self, code: grpc.StatusCode, seconds: float) -> None:
        children = self._by_code.get(code)
        if children is None:
            labels = (*self._labels, code.name)
            children = self._by_code[code] = (
                self._handled.labels(*labels),
                self._handling.labels(*labels),
            )
        handled, handling = children
        handled.inc()
        handling.observe(seconds)
        self.in_flight.dec()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._started = Counter(
            "grpc_server_started", "Total number of RPCs started on the server.",
            _RPC_LABELS, registry=r,
        )  # fmt: skip
        self._handled = Counter(
            "grpc_server_handled", "Total number of RPCs completed on the server, "
            "regardless of success or failure.",
            (*_RPC_LABELS, "grpc_code"), registry=r,
        )  # fmt: skip
        self._handling = Histogram(
            "grpc_server_handling_seconds", "Histogram of response latency (seconds) of "
            "gRPC that had been application-level handled by the server.",
            (*_RPC_LABELS, "grpc_code"), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self._received = Counter(
            "grpc_server_msg_received", "Total number of RPC stream messages received "
            "on the server.", _RPC_LABELS, registry=r,
        )  # fmt: skip
        self._sent = Counter(
            "grpc_server_msg_sent", "Total number of gRPC stream messages sent by the "
            "server.", _RPC_LABELS, registry=r,
        )  # fmt: skip
        self._in_flight = Gauge(
            "mfa_rpc_in_flight", "RPCs started and not yet ended (a stream counts until "
            "it ends)", _RPC_LABELS, registry=r,
        )  # fmt: skip
        Gauge(
            "mfa_build_info",
            "The running build: always 1, its versions in the labels",
            ("version", "python", "grpcio"),
            registry=r,
        ).labels(_version("mfa-service"), platform.python_version(), grpc.__version__).set(1)
        self._validations = Counter(
            "mfa_token_validations", "ValidateActionToken decisions, by decision and reason",
            ("decision", "reason"), registry=r,
        )  # fmt: skip
        self._verifications = Counter(
            "mfa_verifications", "Proofs checked (VerifySession, IssueActionToken), by "
            "method and outcome (success, or the error reason)",
            ("method", "outcome"), registry=r,
        )  # fmt: skip
        self._lockouts = Counter(
            "mfa_lockouts", "Calls refused because the user is locked out", registry=r
        )
        self._tokens_issued = Counter("mfa_tokens_issued", "Action tokens issued", registry=r)
        self._validation_batches = Histogram(
            "mfa_token_validation_batch_size", "Token validations decided together by one "
            "database statement", buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self._methods: dict[str, MethodMetrics] = {}
        self._decisions: dict[tuple[int, int], Any] = {}
        self._outcomes: dict[tuple[str, str], Any] = {}

    def observe_validation_batch(self, size: int) -> None:
        self._validation_batches.observe(size)

    def add_pool(self, collector: PoolCollector) -> None:
        self.registry.register(collector)

    def for_method(self, method: str, grpc_type: str = UNARY) -> MethodMetrics:
        """The series of ``method`` (``/package.Service/Name``), a call of ``grpc_type``."""
        found = self._methods.get(method)
        if found is None:
            service, _, name = method[1:].partition("/")
            labels = (grpc_type, service, name)
            found = self._methods[method] = MethodMetrics(
                method,
                self._started.labels(*labels),
                self._received.labels(*labels),
                self._sent.labels(*labels),
                self._in_flight.labels(*labels),
                self._handled,
                self._handling,
                labels,
            )
        return found

    def record(
        self,
        metrics: MethodMetrics,
        code: grpc.StatusCode,
        reason: str | None,
        request: Any,
        response: Any,
    ) -> None:
        """The service's own metrics of one unary call's outcome. ``reason`` is the
        ``MfaError`` reason of a refused call."""
        method = metrics.method
        if method == VALIDATE_METHOD:
            if response is not None:
                self._validation(response.decision, response.reason)
        elif method in VERIFY_METHODS:
            self._verification(request, code, reason)
            if method == ISSUE_METHOD and code == grpc.StatusCode.OK:
                self._tokens_issued.inc()
        if reason == "ERROR_REASON_LOCKED_OUT":
            self._lockouts.inc()

    def _validation(self, decision: int, reason: int) -> None:
        key = (decision, reason)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self._validations.labels(
                _enum_name(types_pb2.Decision, decision, "DECISION_"),
                _enum_name(types_pb2.DecisionReason, reason, "DECISION_REASON_"),
            )
        child.inc()

    def _verification(self, request: Any, code: grpc.StatusCode, reason: str | None) -> None:
        try:
            kind = request.proof.WhichOneof("kind")
        except AttributeError:  # a malformed request: no message to look at
            kind = None
        method = _PROOF_METHODS.get(kind or "", "none")
        if code == grpc.StatusCode.OK:
            outcome = "success"
        elif reason is not None:
            outcome = reason.removeprefix("ERROR_REASON_").lower()
        else:
            outcome = code.name.lower()
        key = (method, outcome)
        child = self._outcomes.get(key)
        if child is None:
            child = self._outcomes[key] = self._verifications.labels(method, outcome)
        child.inc()


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"
