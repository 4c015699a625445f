"""A software WebAuthn authenticator: real P-256 keys, real CBOR attestation objects
and real signed assertions, with knobs to produce every malformed case a test needs."""

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
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftAuthenticator:
    origin: str
    rp_id: str
    credential_id: bytes = field(default_factory=lambda: os.urandom(32))
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    sign_count: int = 0
    counts: bool = True  # synced passkeys report 0 forever
    backup_eligible: bool = False
    backed_up: bool = False
    user_verified: bool = True
    user_handle: bytes | None = None
    aaguid: bytes = b"\x00" * 16

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
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

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
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return json.dumps(
            {
                "id": b64url(self.credential_id),
                "rawId": b64url(self.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "attestationObject": b64url(attestation),
                    "transports": ["internal"],
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
        signature = self.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
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
