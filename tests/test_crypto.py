"""Envelope encryption at rest (mfa_service.crypto): key ring parsing, sealing, rotation."""

from __future__ import annotations

import base64
import uuid

import pytest

from mfa_service.crypto import KEY_BYTES, DecryptionError, KeyRing, KeyRingError
from mfa_service.domain.devices import secret_context
from mfa_service.domain.model import EnvironmentId, UserId

KEY_A = base64.b64encode(b"A" * KEY_BYTES).decode()
KEY_B = base64.b64encode(b"B" * KEY_BYTES).decode()
SHORT_KEY = base64.b64encode(b"S" * 16).decode()
CONTEXT = b"env-1/user-1/device-1"
SECRET = b"JBSWY3DPEHPK3PXP-a-totp-seed"


@pytest.mark.parametrize(
    ("spec", "material"),
    [
        pytest.param("", "", id="empty"),
        pytest.param("   ", "", id="blank"),
        pytest.param(KEY_A, KEY_A, id="no-colon"),
        pytest.param(f":{KEY_A}", KEY_A, id="no-kid"),
        pytest.param(f"k1:{KEY_A},", KEY_A, id="trailing-comma"),
        pytest.param("k1:not*base64!!", "not*base64!!", id="bad-base64"),
        pytest.param(f"k1:{KEY_A[:-4]}", KEY_A[:-4], id="truncated-base64"),
        pytest.param(f"k1:{SHORT_KEY}", SHORT_KEY, id="128-bit-key"),
        pytest.param(f"k1:{base64.b64encode(b'x' * 33).decode()}", "eHh4eHh4", id="33-byte-key"),
        pytest.param(f"k1:{KEY_A},k1:{KEY_B}", KEY_B, id="duplicate-kid"),
        pytest.param(f"bad kid:{KEY_A}", KEY_A, id="kid-with-space"),
        pytest.param(f"{'k' * 65}:{KEY_A}", KEY_A, id="kid-too-long"),
        pytest.param(f"k/1:{KEY_A}", KEY_A, id="kid-with-slash"),
    ],
)
def test_malformed_key_ring_is_refused_without_revealing_key_material(
    spec: str, material: str
) -> None:
    with pytest.raises(KeyRingError) as raised:
        KeyRing.parse(spec)
    message = str(raised.value)
    assert message
    if material:
        # Not the key, nor a recognisable chunk of it.
        assert material not in message
        assert material[:8] not in message


def test_parse_reads_entries_in_order_and_the_first_is_active() -> None:
    ring = KeyRing.parse(f" new:{KEY_B} , old:{KEY_A} ")
    assert ring.active_kid == "new"
    assert ring.keys == (("new", b"B" * KEY_BYTES), ("old", b"A" * KEY_BYTES))


def test_generated_entry_parses_to_a_256_bit_key() -> None:
    entry = KeyRing.generate_entry("k9")
    ring = KeyRing.parse(entry)
    assert ring.active_kid == "k9"
    assert len(ring.keys[0][1]) == KEY_BYTES
    assert KeyRing.generate_entry("k9") != entry


def test_encrypt_decrypt_round_trip() -> None:
    ring = KeyRing.parse(f"k1:{KEY_A}")
    blob = ring.encrypt(SECRET, context=CONTEXT)
    assert ring.decrypt(blob, context=CONTEXT) == SECRET
    assert ring.decrypt(ring.encrypt(b"", context=b""), context=b"") == b""


def test_ciphertext_hides_the_plaintext_and_uses_a_fresh_nonce() -> None:
    ring = KeyRing.parse(f"k1:{KEY_A}")
    first = ring.encrypt(SECRET, context=CONTEXT)
    second = ring.encrypt(SECRET, context=CONTEXT)
    assert SECRET not in first
    assert SECRET[:8] not in first
    assert first != second
    assert ring.decrypt(second, context=CONTEXT) == SECRET


@pytest.mark.parametrize(
    "other_context",
    [b"env-1/user-2/device-1", b"env-2/user-1/device-1", b"", CONTEXT + b"x"],
)
def test_a_blob_under_another_context_does_not_decrypt(other_context: bytes) -> None:
    ring = KeyRing.parse(f"k1:{KEY_A}")
    blob = ring.encrypt(SECRET, context=CONTEXT)
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, context=other_context)


DEVICE = uuid.UUID("6f1c2b1e-4a53-4f0e-9c77-1d2e3f405162")
ROW = ("totp", EnvironmentId("env-1"), UserId("user-1"), DEVICE)


@pytest.mark.parametrize(
    "moved",
    [
        pytest.param(("passkey", *ROW[1:]), id="kind"),
        pytest.param((ROW[0], EnvironmentId("env-2"), *ROW[2:]), id="environment"),
        pytest.param((*ROW[:2], UserId("user-2"), ROW[3]), id="user"),
        pytest.param((*ROW[:3], uuid.UUID(int=DEVICE.int ^ 1)), id="device"),
    ],
)
def test_a_secret_sealed_for_one_device_opens_only_in_its_own_context(
    moved: tuple[str, EnvironmentId, UserId, uuid.UUID],
) -> None:
    """secret_context binds kind, environment, user and device (AES-GCM associated data)."""
    ring = KeyRing.parse(f"k1:{KEY_A}")
    blob = ring.encrypt(SECRET, context=secret_context(*ROW))
    assert ring.decrypt(blob, context=secret_context(*ROW)) == SECRET
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, context=secret_context(*moved))


def test_every_tampered_byte_is_detected() -> None:
    ring = KeyRing.parse(f"k1:{KEY_A}")
    blob = ring.encrypt(SECRET, context=CONTEXT)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptionError):
            ring.decrypt(bytes(tampered), context=CONTEXT)


def test_every_truncation_is_detected() -> None:
    ring = KeyRing.parse(f"k1:{KEY_A}")
    blob = ring.encrypt(SECRET, context=CONTEXT)
    for length in range(len(blob)):
        with pytest.raises(DecryptionError):
            ring.decrypt(blob[:length], context=CONTEXT)


def test_a_key_with_the_same_id_but_other_bytes_does_not_decrypt() -> None:
    blob = KeyRing.parse(f"k1:{KEY_A}").encrypt(SECRET, context=CONTEXT)
    with pytest.raises(DecryptionError):
        KeyRing.parse(f"k1:{KEY_B}").decrypt(blob, context=CONTEXT)


def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    old_ring = KeyRing.parse(f"old:{KEY_A}")
    rotated = KeyRing.parse(f"new:{KEY_B},old:{KEY_A}")
    sealed_before = old_ring.encrypt(SECRET, context=CONTEXT)
    assert old_ring.kid_of(sealed_before) == "old"

    assert rotated.decrypt(sealed_before, context=CONTEXT) == SECRET
    sealed_after = rotated.encrypt(SECRET, context=CONTEXT)
    assert rotated.kid_of(sealed_after) == "new"
    assert rotated.decrypt(sealed_after, context=CONTEXT) == SECRET
    # Once the old key is retired, what it sealed no longer opens.
    with pytest.raises(DecryptionError):
        KeyRing.parse(f"new:{KEY_B}").decrypt(sealed_before, context=CONTEXT)


def test_unknown_kid_fails() -> None:
    blob = KeyRing.parse(f"k1:{KEY_A}").encrypt(SECRET, context=CONTEXT)
    with pytest.raises(DecryptionError):
        KeyRing.parse(f"k2:{KEY_A}").decrypt(blob, context=CONTEXT)


def test_the_key_id_is_authenticated() -> None:
    """Relabelling a blob with another kid of the same key must not decrypt."""
    ring = KeyRing.parse(f"k1:{KEY_A},k2:{KEY_A}")
    blob = ring.encrypt(SECRET, context=CONTEXT)
    relabelled = blob[:2] + b"k2" + blob[4:]
    assert ring.kid_of(relabelled) == "k2"
    with pytest.raises(DecryptionError):
        ring.decrypt(relabelled, context=CONTEXT)
