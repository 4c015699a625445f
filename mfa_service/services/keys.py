"""The action-token signing keys: created at first start, shared by replicas, rotated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from mfa_service.clock import Clock
from mfa_service.crypto import KeyRing
from mfa_service.domain import tokens
from mfa_service.domain.settings import MULTI_USE_TTL_RANGE, SINGLE_USE_TTL_RANGE
from mfa_service.domain.tokens import SigningKey
from mfa_service.store import signing_keys as key_store
from mfa_service.store.db import Connection, Database

log = logging.getLogger("mfa_service.keys")

# How old the in-memory keys may get when no notification says they changed (the
# listener is down, or a notification was lost).
REFRESH_INTERVAL = timedelta(seconds=60)
# The longest lifetime the settings allow a token.
MAX_TOKEN_LIFETIME = max(SINGLE_USE_TTL_RANGE[1], MULTI_USE_TTL_RANGE[1])
# A retired key verifies until every token it signed has expired: the longest lifetime,
# plus a margin for a replica that signs with it until it learns of the rotation (at
# most REFRESH_INTERVAL) and for clocks.
RETIRED_KEY_KEPT = MAX_TOKEN_LIFETIME + timedelta(minutes=5)


def _context(kid: str) -> bytes:
    return b"signing-key\x00" + kid.encode()


class TokenKeys:
    """An in-memory copy of the usable keys: reloaded from PostgreSQL when a replica
    announces a new key (``invalidate``, by LISTEN/NOTIFY), and every REFRESH_INTERVAL
    in case an announcement was missed.

    ``algorithm`` is the configured one: the algorithm of the keys this replica makes (at
    start if the active key has another, and on rotation). Tokens are signed with the
    active key whatever its algorithm, so replicas configured differently during a
    rolling change do not take turns making keys; and tokens of every algorithm of the
    kept keys stay valid until they expire.
    """

    def __init__(self, db: Database, clock: Clock, key_ring: KeyRing, algorithm: str) -> None:
        if algorithm not in tokens.ALGORITHMS:
            raise ValueError(f"unsupported token algorithm {algorithm!r}")
        self._db = db
        self._clock = clock
        self._key_ring = key_ring
        self.algorithm = algorithm
        self._keys: dict[str, SigningKey] = {}
        self._algorithms: frozenset[str] = frozenset()
        self._signing: SigningKey | None = None
        self._loaded_at: datetime | None = None
        self._generation = 0  # bumped by every invalidation
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        """At start: make sure a key of the configured algorithm signs, then load."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            await key_store.lock(conn)
            stored = await key_store.list_usable(conn, retired_after=now - RETIRED_KEY_KEPT)
            active = [k for k in stored if k.retired_at is None]
            if not active or active[0].algorithm != self.algorithm:
                await self._create(conn, now)
        await self.reload()

    async def rotate(self) -> SigningKey:
        """A new signing key; the old one keeps verifying until its tokens expire."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            await key_store.lock(conn)
            key = await self._create(conn, now)
        await self.reload()
        return key

    async def _create(self, conn: Connection, now: datetime) -> SigningKey:
        key = tokens.generate_key(self.algorithm, now=now)
        sealed = self._key_ring.encrypt(tokens.private_key_bytes(key), context=_context(key.kid))
        await key_store.insert_active(
            conn, kid=key.kid, algorithm=key.algorithm, sealed_private_key=sealed, now=now
        )
        log.info("new token signing key %s (%s)", key.kid, key.algorithm)
        return key

    def invalidate(self, _kid: str | None = None) -> None:
        """Keys changed somewhere (or may have): the next use reloads them."""
        self._generation += 1
        self._loaded_at = None

    async def reload(self) -> None:
        generation = self._generation
        now = self._clock.now()
        async with self._db.transaction() as conn:
            stored = await key_store.list_usable(conn, retired_after=now - RETIRED_KEY_KEPT)
        keys = {}
        for k in stored:
            private = tokens.load_private_key(
                self._key_ring.decrypt(k.sealed_private_key, context=_context(k.kid))
            )
            keys[k.kid] = SigningKey(
                kid=k.kid,
                algorithm=k.algorithm,
                private_key=private if k.retired_at is None else None,
                public_key=private.public_key(),
                created_at=k.created_at,
                retired_at=k.retired_at,
            )
        self._keys = keys
        self._algorithms = frozenset(k.algorithm for k in keys.values()) & set(tokens.ALGORITHMS)
        self._signing = next((k for k in keys.values() if k.retired_at is None), None)
        # Invalidated while this read ran: it may have missed the change, read again.
        self._loaded_at = now if generation == self._generation else None

    async def _fresh(self) -> None:
        if self._stale():
            async with self._lock:
                if self._stale():
                    await self.reload()

    def _stale(self) -> bool:
        now = self._clock.now()
        loaded = self._loaded_at
        return loaded is None or now - loaded >= REFRESH_INTERVAL or now < loaded

    async def signing_key(self) -> SigningKey:
        await self._fresh()
        if self._signing is None:  # nobody made one yet, or it was removed by hand
            await self.ensure()
        if self._signing is None:
            raise LookupError("no token signing key")
        return self._signing

    async def verification_keys(self) -> Mapping[str, SigningKey]:
        """The active key and the retired ones whose tokens may not have expired yet."""
        await self._fresh()
        return self._keys

    async def algorithms(self) -> frozenset[str]:
        """The algorithms of ``verification_keys``: the only ones a token may name."""
        await self._fresh()
        return self._algorithms

    async def sign_security_event(self, claims: Mapping[str, Any]) -> str:
        """A Security Event Token of ``claims`` signed with the active key (RFC 8417; a
        CAEP webhook delivers it): verifiable with ``jwks`` like an action token."""
        return tokens.encode_security_event(claims, await self.signing_key())

    async def jwks(self) -> str:
        keys = await self.verification_keys()
        return tokens.jwks(list(keys.values()))
