"""What the use cases share: the database, the clock, the key ring, the settings cache,
the verifier of proofs, and the tracer (None: tracing off).

One ``Runtime`` is built at start-up (``mfa_service.app``); a service class derives from
``UseCase`` and receives it, with only the collaborators of its own (the token service,
the webhook options...) as further arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace

from mfa_service.clock import Clock
from mfa_service.crypto import KeyRing
from mfa_service.store.db import Database

if TYPE_CHECKING:  # both modules derive from UseCase
    from mfa_service.services.settings import SettingsCache
    from mfa_service.services.verification import Verifier


@dataclass(frozen=True, slots=True)
class Runtime:
    db: Database
    clock: Clock
    key_ring: KeyRing
    settings: SettingsCache
    # One per process: its KDF slots bound the scrypt work of every use case together.
    verifier: Verifier
    # Spans of the work no call asked for (mfa_service.tracing); None: nothing traced.
    tracer: trace.Tracer | None = None


class UseCase:
    """A service over the shared ``Runtime``: ``self._db``, ``self._clock``,
    ``self._key_ring``, ``self._settings``, ``self._verifier`` and ``self._tracer``."""

    def __init__(self, runtime: Runtime) -> None:
        self._db = runtime.db
        self._clock = runtime.clock
        self._key_ring = runtime.key_ring
        self._settings = runtime.settings
        self._verifier = runtime.verifier
        self._tracer = runtime.tracer
