"""RFC 6238 / RFC 4226 known answers and the matching rules of mfa_service.domain.totp."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from mfa_service.domain import totp
from mfa_service.errors import InvalidArgument

SEEDS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
DIGESTS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}

# RFC 6238 Appendix B: (unix time, T in hex, TOTP, mode).
RFC6238 = [
    (59, 0x1, "94287082", "SHA1"),
    (59, 0x1, "46119246", "SHA256"),
    (59, 0x1, "90693936", "SHA512"),
    (1111111109, 0x23523EC, "07081804", "SHA1"),
    (1111111109, 0x23523EC, "68084774", "SHA256"),
    (1111111109, 0x23523EC, "25091201", "SHA512"),
    (1111111111, 0x23523ED, "14050471", "SHA1"),
    (1111111111, 0x23523ED, "67062674", "SHA256"),
    (1111111111, 0x23523ED, "99943326", "SHA512"),
    (1234567890, 0x273EF07, "89005924", "SHA1"),
    (1234567890, 0x273EF07, "91819424", "SHA256"),
    (1234567890, 0x273EF07, "93441116", "SHA512"),
    (2000000000, 0x3F940AA, "69279037", "SHA1"),
    (2000000000, 0x3F940AA, "90698825", "SHA256"),
    (2000000000, 0x3F940AA, "38618901", "SHA512"),
    (20000000000, 0x27BC86AA, "65353130", "SHA1"),
    (20000000000, 0x27BC86AA, "77737706", "SHA256"),
    (20000000000, 0x27BC86AA, "47863826", "SHA512"),
]
# RFC 4226 Appendix D: HOTP values for counters 0..9.
RFC4226 = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]


def b32(seed: bytes) -> str:
    return base64.b32encode(seed).decode().rstrip("=")


@pytest.mark.parametrize(("unix", "step", "expected", "mode"), RFC6238)
def test_rfc6238_appendix_b(unix: int, step: int, expected: str, mode: str) -> None:
    params = totp.TotpParameters(digits=8, period_seconds=30, digest=DIGESTS[mode])
    at = datetime.fromtimestamp(unix, UTC)
    assert totp.time_step(at, params) == step
    assert totp.code_at_step(b32(SEEDS[mode]), step, params) == expected
    assert (
        totp.matching_step(
            secret=b32(SEEDS[mode]), code=expected, at=at, skew_steps=0, params=params
        )
        == step
    )


@pytest.mark.parametrize(("counter", "expected"), list(enumerate(RFC4226)))
def test_rfc4226_appendix_d(counter: int, expected: str) -> None:
    assert totp.code_at_step(b32(SEEDS["SHA1"]), counter) == expected


NOW = datetime(2026, 3, 1, 9, 30, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("offset", "skew", "accepted"),
    [
        (-1, 1, True),
        (0, 1, True),
        (1, 1, True),
        (-2, 1, False),
        (2, 1, False),
        (0, 0, True),
        (-1, 0, False),
        (1, 0, False),
    ],
)
def test_skew_window(offset: int, skew: int, accepted: bool) -> None:
    secret = totp.new_secret()
    step = totp.time_step(NOW) + offset
    code = totp.code_at_step(secret, step)
    matched = totp.matching_step(secret=secret, code=code, at=NOW, skew_steps=skew)
    assert matched == (step if accepted else None)


def test_step_boundaries_follow_the_30_second_period() -> None:
    start = datetime(2026, 3, 1, 9, 30, 0, tzinfo=UTC)
    assert totp.time_step(start) == totp.time_step(start + timedelta(seconds=29))
    assert totp.time_step(start + timedelta(seconds=30)) == totp.time_step(start) + 1


def test_secrets_are_160_bit_and_distinct() -> None:
    secrets = {totp.new_secret() for _ in range(1000)}
    assert len(secrets) == 1000
    for secret in list(secrets)[:50]:
        assert "=" not in secret
        assert len(base64.b32decode(secret)) == 20


def test_provisioning_uri_round_trips_through_pyotp() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret=secret, account_name="alice@example.com", issuer="Acme")
    assert uri.startswith("otpauth://totp/Acme:alice%40example.com?")
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.secret == secret
    assert parsed.issuer == "Acme"
    assert parsed.name == "alice@example.com"
    assert (parsed.digits, parsed.interval, parsed.digest().name) == (6, 30, "sha1")
    assert "issuer=Acme" in uri


@pytest.mark.parametrize(
    "bad", ["12345", "1234567", "12a456", "\uff11\uff12\uff13\uff14\uff15\uff16", " 12345", ""]
)
def test_code_format_is_six_ascii_digits(bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        totp.check_code_format(bad, "proof.totp_code")
    assert caught.value.violations[0].field == "proof.totp_code"


@pytest.mark.parametrize("bad", ["a:b", "", "  ", "tab\there", "x" * 129])
def test_label_parts_refuse_colons_and_control_characters(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        totp.check_label_part(bad, "account_name")
