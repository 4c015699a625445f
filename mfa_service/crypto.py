"""Envelope encryption of secrets at rest with a key ring (AES-256-GCM).

The key ring maps key ids to 256-bit keys; the first key encrypts, every key decrypts,
so keys rotate by putting a new key first and re-encrypting at leisure. A sealed blob
is ``b"\\x01" | len(kid) | kid | nonce(12) | ciphertext+tag``; the key id and version
are authenticated as associated data together with the caller's context (e.g.
environment, user and device), so a blob moved to another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = 1
_NONCE_BYTES = 12
KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class KeyRingError(ValueError):
    """The key ring configuration is malformed (the message never contains key bytes)."""


class DecryptionError(Exception):
    """A sealed blob did not authenticate: wrong key, wrong context or tampered."""


@dataclass(frozen=True, slots=True)
class KeyRing:
    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError("the key ring needs at least one key")
        seen: set[str] = set()
        for kid, key in self.keys:
            if not _KID.match(kid):
                raise KeyRingError(f"key id {kid!r} must be 1-64 of [A-Za-z0-9_.-]")
            if kid in seen:
                raise KeyRingError(f"key id {kid!r} appears twice")
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"key {kid!r} must be {KEY_BYTES} bytes (256 bits)")
            seen.add(kid)

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Parse ``kid:base64key[,kid:base64key...]``; the first key is the active one."""
        keys = []
        for raw_entry in spec.split(","):
            entry = raw_entry.strip()
            kid, sep, encoded = entry.partition(":")
            if not sep or not kid:
                raise KeyRingError("each entry must be KEY_ID:BASE64_KEY")
            try:
                key = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise KeyRingError(f"key {kid!r} is not valid base64") from None
            keys.append((kid, key))
        return cls(tuple(keys))

    @staticmethod
    def generate_entry(kid: str) -> str:
        """A new ``kid:base64key`` entry from the OS CSPRNG."""
        return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"

    @property
    def active_kid(self) -> str:
        return self.keys[0][0]

    def encrypt(self, plaintext: bytes, *, context: bytes) -> bytes:
        kid, key = self.keys[0]
        header = bytes([_VERSION, len(kid)]) + kid.encode()
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + context)

    def decrypt(self, blob: bytes, *, context: bytes) -> bytes:
        if len(blob) < 2 or blob[0] != _VERSION:
            raise DecryptionError("unknown sealed-blob version")
        kid_end = 2 + blob[1]
        kid = blob[2:kid_end].decode(errors="replace")
        key = dict(self.keys).get(kid)
        if key is None:
            raise DecryptionError(f"no key {kid!r} in the key ring")
        nonce, sealed = blob[kid_end : kid_end + _NONCE_BYTES], blob[kid_end + _NONCE_BYTES :]
        if len(nonce) != _NONCE_BYTES:  # AESGCM would raise ValueError, not InvalidTag
            raise DecryptionError("sealed blob is truncated")
        try:
            return AESGCM(key).decrypt(nonce, sealed, blob[:kid_end] + context)
        except InvalidTag:
            raise DecryptionError("sealed blob did not authenticate") from None

    def kid_of(self, blob: bytes) -> str:
        """The id of the key that sealed ``blob`` (to find blobs to re-encrypt)."""
        return blob[2 : 2 + blob[1]].decode(errors="replace")
