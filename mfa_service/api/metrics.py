"""Prometheus metrics of the calls, recorded by the interceptor from each call's outcome.

Each application has its own registry (tests run several in one process); the metrics
endpoint is prometheus-client's own HTTP server on ``MFA_METRICS_ADDR``. Label children
are looked up once per method and status, then cached: the hot path is dict lookups and
the increments themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
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


@dataclass
class _MethodMetrics:
    duration: Any  # a Histogram child
    requests: Counter
    method: str
    by_code: dict[grpc.StatusCode, Any] = field(default_factory=dict)

    def count(self, code: grpc.StatusCode) -> None:
        child = self.by_code.get(code)
        if child is None:
            child = self.by_code[code] = self.requests.labels(self.method, code.name)
        child.inc()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "mfa_rpc_requests", "RPCs handled, by method and status code",
            ("method", "code"), registry=r,
        )  # fmt: skip
        self._duration = Histogram(
            "mfa_rpc_duration_seconds", "RPC handling time, by method",
            ("method",), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
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
        self._methods: dict[str, _MethodMetrics] = {}
        self._decisions: dict[tuple[int, int], Any] = {}
        self._outcomes: dict[tuple[str, str], Any] = {}

    def observe_validation_batch(self, size: int) -> None:
        self._validation_batches.observe(size)

    def add_pool(self, collector: PoolCollector) -> None:
        self.registry.register(collector)

    def for_method(self, method: str) -> _MethodMetrics:
        found = self._methods.get(method)
        if found is None:
            found = self._methods[method] = _MethodMetrics(
                self._duration.labels(method), self._requests, method
            )
        return found

    def record(
        self,
        metrics: _MethodMetrics,
        seconds: float,
        code: grpc.StatusCode,
        reason: str | None,
        request: Any,
        response: Any,
    ) -> None:
        """One call's outcome. ``reason`` is the ``MfaError`` reason of a refused call."""
        metrics.duration.observe(seconds)
        metrics.count(code)
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
