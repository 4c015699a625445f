"""Recovery codes: generation, normalisation and hashing.

A code is four groups of five Crockford base32 characters, e.g. ``7K2QD-XF9MT-...``:
100 bits from the OS CSPRNG. The first group (25 bits) is a non-secret id that finds the
one stored row; the other three (75 bits) are the secret. Under 112 bits, so stored as
a salted scrypt hash (NIST SP 800-63B §3.1.2.2). One check costs one scrypt call, never
one per stored code.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from mfa_service.errors import InvalidArgument

CODES_PER_SET = 10
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_GROUP = 5
_GROUPS = 4
# Read-aloud mistakes Crockford base32 forgives.
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})
# scrypt N=2^12, r=8, p=1: about 8 ms and 4 MiB per check on this service's hardware.
# The secret part has 75 bits, so an offline attacker with the table still faces
# 2^75 guesses times scrypt; online guessing is capped by the lockout. A costlier
# setting would only hand callers a CPU lever (every failed check must run it too).
_SCRYPT = {"n": 2**12, "r": 8, "p": 1, "dklen": 32}
SALT_BYTES = 16


@dataclass(frozen=True, slots=True)
class HashedCode:
    code_id: str
    salt: bytes
    hash: bytes


def _random_group() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(_GROUP))


def generate() -> list[str]:
    """Ten codes with distinct ids."""
    codes: list[str] = []
    ids: set[str] = set()
    while len(codes) < CODES_PER_SET:
        groups = [_random_group() for _ in range(_GROUPS)]
        if groups[0] in ids:
            continue
        ids.add(groups[0])
        codes.append("-".join(groups))
    return codes


def split(code: str, field: str) -> tuple[str, str]:
    """(id, secret) of a code as typed: case, spaces, dashes and O/I/L forgiven."""
    compact = "".join(code.split()).replace("-", "").upper().translate(_CONFUSABLE)
    if len(compact) != _GROUP * _GROUPS or any(c not in _ALPHABET for c in compact):
        raise InvalidArgument.field(field, "must be a recovery code like XXXXX-XXXXX-XXXXX-XXXXX")
    return compact[:_GROUP], compact[_GROUP:]


def _kdf(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def hash_code(code: str) -> HashedCode:
    code_id, secret = split(code, "code")
    salt = os.urandom(SALT_BYTES)
    return HashedCode(code_id=code_id, salt=salt, hash=_kdf(secret, salt))


def matches(secret: str, stored: HashedCode | None) -> bool:
    """Constant-time check; with no stored row, burn the same work and say no."""
    if stored is None:
        _kdf(secret, b"\x00" * SALT_BYTES)
        return False
    return hmac.compare_digest(_kdf(secret, stored.salt), stored.hash)
