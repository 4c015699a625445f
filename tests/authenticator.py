"""A software WebAuthn authenticator: real keys (ES256 on P-256, EdDSA on Ed25519, RS256
with RSA 2048), real CBOR attestation objects and real signed assertions, with knobs to
produce every malformed case a test needs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def new_key(algorithm: str) -> PrivateKey:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert algorithm == "ES256", algorithm
    return ec.generate_private_key(ec.SECP256R1())


def cose_key(key: PrivateKey) -> bytes:
    """The COSE_Key (RFC 9052/9053) of ``key``'s public half, as an authenticator sends it."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes_raw()
        return cbor2.dumps({1: 1, 3: -8, -1: 6, -2: raw})
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_numbers = key.public_key().public_numbers()
        n = rsa_numbers.n.to_bytes((rsa_numbers.n.bit_length() + 7) // 8, "big")
        return cbor2.dumps({1: 3, 3: -257, -1: n, -2: rsa_numbers.e.to_bytes(3, "big")})
    numbers = key.public_key().public_numbers()
    return cbor2.dumps(
        {1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftAuthenticator:
    origin: str
    rp_id: str
    credential_id: bytes = field(default_factory=lambda: os.urandom(32))
    algorithm: str = "ES256"  # or "EdDSA", "RS256"
    key: PrivateKey | None = None  # a new key of the algorithm when left out
    # Registered instead of the key's own COSE form (a hostile or broken authenticator).
    cose_key: bytes | None = None
    transports: list[Any] = field(default_factory=lambda: ["internal"])
    sign_count: int = 0
    counts: bool = True  # synced passkeys report 0 forever
    backup_eligible: bool = False
    backed_up: bool = False
    user_verified: bool = True
    user_handle: bytes | None = None
    aaguid: bytes = b"\x00" * 16

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = new_key(self.algorithm)

    @property
    def private_key(self) -> PrivateKey:
        assert self.key is not None
        return self.key

    def _flags(self, *, attested: bool, **overrides: bool) -> int:
        values = {
            "up": True,
            "uv": self.user_verified,
            "be": self.backup_eligible,
            "bs": self.backed_up,
            **overrides,
        }
        flags = (UP if values["up"] else 0) | (UV if values["uv"] else 0)
        flags |= (BE if values["be"] else 0) | (BS if values["bs"] else 0)
        return flags | (AT if attested else 0)

    def _cose_key(self) -> bytes:
        return self.cose_key if self.cose_key is not None else cose_key(self.private_key)

    def _sign(self, data: bytes) -> bytes:
        key = self.private_key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    def _client_data(self, kind: str, challenge: bytes, origin: str | None) -> bytes:
        return json.dumps(
            {
                "type": kind,
                "challenge": b64url(challenge),
                "origin": origin or self.origin,
                "crossOrigin": False,
            }
        ).encode()

    def register(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: bytes | None = None,
        kind: str = "webauthn.create",
        fmt: str = "none",
        att_stmt: dict[str, Any] | None = None,
        **flags: bool,
    ) -> str:
        """navigator.credentials.create() answered, as ``credential.toJSON()``."""
        options = json.loads(options_json)
        self.user_handle = unb64url(options["user"]["id"])
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        attested = (
            self.aaguid
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose_key()
        )
        auth_data = (
            rp_hash
            + bytes([self._flags(attested=True, **flags)])
            + struct.pack(">I", self.sign_count)
            + attested
        )
        client_data = self._client_data(
            kind, challenge if challenge is not None else unb64url(options["challenge"]), origin
        )
        attestation = cbor2.dumps({"fmt": fmt, "attStmt": att_stmt or {}, "authData": auth_data})
        return json.dumps(
            {
                "id": b64url(self.credential_id),
                "rawId": b64url(self.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "attestationObject": b64url(attestation),
                    "transports": self.transports,
                },
                "clientExtensionResults": {},
                "authenticatorAttachment": "platform",
            }
        )

    def assertion(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: bytes | None = None,
        kind: str = "webauthn.get",
        sign_count: int | None = None,
        user_handle: bytes | str | None = "own",
        **flags: bool,
    ) -> str:
        """navigator.credentials.get() answered, as ``credential.toJSON()``."""
        options = json.loads(options_json)
        if sign_count is None:
            if self.counts:
                self.sign_count += 1
            sign_count = self.sign_count if self.counts else 0
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        auth_data = (
            rp_hash + bytes([self._flags(attested=False, **flags)]) + struct.pack(">I", sign_count)
        )
        client_data = self._client_data(
            kind, challenge if challenge is not None else unb64url(options["challenge"]), origin
        )
        signature = self._sign(auth_data + hashlib.sha256(client_data).digest())
        response: dict[str, Any] = {
            "clientDataJSON": b64url(client_data),
            "authenticatorData": b64url(auth_data),
            "signature": b64url(signature),
        }
        handle = self.user_handle if user_handle == "own" else user_handle
        if handle is not None:
            assert isinstance(handle, bytes)
            response["userHandle"] = b64url(handle)
        return json.dumps(
            {
                "id": b64url(self.credential_id),
                "rawId": b64url(self.credential_id),
                "type": "public-key",
                "response": response,
                "clientExtensionResults": {},
                "authenticatorAttachment": "platform",
            }
        )
