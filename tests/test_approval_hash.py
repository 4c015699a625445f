"""The approval hash (docs/approvals.md) three times over: the service's
``domain.approvals.bind``, the Python client's ``mfa_client.approval_hash`` (rfc8785) and
the TypeScript client's ``approvalHash`` (canonicalize + node:crypto), held to each other
over fixed and random approvals, with the document's example pinned to its digest.

The TypeScript client is compiled with the repository's tsc, and every vector goes to one
node process (JSON in on stdin, JSON out), so the whole batch costs one spawn.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from mfa.v1 import types_pb2 as types
from mfa_client import approval_hash
from mfa_service.domain import approvals
from mfa_service.domain.model import Action, EnvironmentId, UserId
from typescript_client import ROOT, compile_client, node_approval_hashes

DOC = ROOT / "docs" / "approvals.md"

# docs/approvals.md's example: pay 1.5 ETH to 0x12ab, shown as "Send 1.5 ETH to 0x12…ab on Base".
EXAMPLE_PAYLOAD = b"pay 1.5 ETH to 0x12ab"
EXAMPLE_DIGEST_HEX = "3a8f29f0be4a758d9b19602662ca93a9789643e31f49dc9aaa6917f7cbb130c5"
EXAMPLE_HASH_HEX = "36d04533117bcf5966626dd3738d729187f7b2ba18ec06e6849019c41227c01f"

ACTIONS = [a for a in types.Action.values() if a != types.ACTION_UNSPECIFIED]
# The service binds an approval of a credential change only as single use.
CREDENTIAL_ACTIONS = {
    types.ACTION_CREDENTIAL_LINK,
    types.ACTION_CREDENTIAL_UNLINK,
    types.ACTION_RECOVERY_CODES_REGENERATE,
}


def bindable_use(actions: tuple[types.Action.ValueType, ...], single_use: bool) -> bool:
    return single_use or bool(CREDENTIAL_ACTIONS.intersection(actions))


@dataclass(frozen=True)
class Vector:
    environment_id: str
    user_id: str
    challenge_id: str
    expires_at: int
    actions: tuple[types.Action.ValueType, ...]  # in the caller's order
    payload_digest: bytes
    display_text: str
    single_use: bool
    session_id: str = ""

    def approval(self) -> types.Approval:
        return types.Approval(
            actions=self.actions,
            payload_digest=self.payload_digest,
            display_text=self.display_text,
            single_use=self.single_use,
            session_id=self.session_id,
        )


EXAMPLE = Vector(
    environment_id="env-a",
    user_id="alice",
    challenge_id="7d1a4e1e-2f0a-4a39-9d8a-6b0b7c4d2e11",
    expires_at=1796656800,
    actions=(types.ACTION_WAAS_SIGN,),
    payload_digest=hashlib.sha256(EXAMPLE_PAYLOAD).digest(),
    display_text="Send 1.5 ETH to 0x12…ab on Base",
    single_use=True,
)

FIXED = [
    EXAMPLE,
    replace(EXAMPLE, single_use=False, session_id="s1"),
    replace(EXAMPLE, display_text="Send 1.5 ETH to 0x12…ab on Base 🚀🔐"),
    replace(EXAMPLE, display_text='He said "pay" \\ then \\\\ "quoted" \\"'),
    replace(EXAMPLE, display_text="</script> / \\/ \\u0041 {\"a\":1} 'single'"),
    replace(EXAMPLE, display_text="Überweisung 1,50 € an Zoë — ½ 円 ÷ ©"),
    replace(EXAMPLE, display_text="إرسال 1.5 ETH إلى 0x12…ab שלח 送金 송금"),
    # Printable only (str.isprintable): no ZWJ emoji sequence, no RLM (format characters).
    replace(EXAMPLE, display_text="e\u0301 (combining) vs é, 👍🏽 ❤️ 🇩🇪 𝄞"),
    replace(EXAMPLE, display_text="x" * approvals.MAX_DISPLAY_TEXT),
    replace(EXAMPLE, display_text="😀" * approvals.MAX_DISPLAY_TEXT),  # 512 UTF-16 units
    replace(
        EXAMPLE,
        actions=(
            types.ACTION_WAAS_SIGN,
            types.ACTION_CREDENTIAL_LINK,
            types.ACTION_WAAS_EXPORT,
            types.ACTION_RECOVERY_CODES_REGENERATE,
        ),
    ),
    replace(EXAMPLE, actions=tuple(reversed(ACTIONS)), session_id="sess-ü-😀"),
    replace(EXAMPLE, environment_id="env-ü", user_id='al"ice\\', session_id="s\\1"),
    replace(EXAMPLE, payload_digest=bytes(32), expires_at=0),
    replace(EXAMPLE, payload_digest=b"\xff" * 32, expires_at=253_402_300_799),
]

# What no implementation binds (the service refuses it; the clients raise).
INVALID = {
    "no action": replace(EXAMPLE, actions=()),
    "an action twice": replace(EXAMPLE, actions=(types.ACTION_WAAS_SIGN, types.ACTION_WAAS_SIGN)),
    "ACTION_UNSPECIFIED": replace(EXAMPLE, actions=(types.ACTION_UNSPECIFIED,)),
    "a 31-byte digest": replace(EXAMPLE, payload_digest=bytes(31)),
    "an uppercase challenge id": replace(EXAMPLE, challenge_id=EXAMPLE.challenge_id.upper()),
    "a challenge id without hyphens": replace(
        EXAMPLE, challenge_id=EXAMPLE.challenge_id.replace("-", "")
    ),
}

# Code points the random display texts are drawn from: ASCII (with " and \), Latin-1,
# Greek, combining marks, Hebrew, Arabic, CJK, Hangul, emoji and other astral symbols.
_RANGES = [
    (0x20, 0x7E),
    (0xA0, 0xFF),
    (0x370, 0x3FF),
    (0x300, 0x36F),
    (0x590, 0x5FF),
    (0x600, 0x6FF),
    (0x2000, 0x206F),
    (0x4E00, 0x4FFF),
    (0xAC00, 0xAD00),
    (0x1F300, 0x1F64F),
    (0x1D100, 0x1D1FF),
]


def _random_text(rng: random.Random) -> str:
    length = rng.choice([1, 2, 8, 40, 120, approvals.MAX_DISPLAY_TEXT])
    chars: list[str] = []
    while len(chars) < length:
        low, high = rng.choice(_RANGES)
        char = rng.choice('"\\') if rng.random() < 0.1 else chr(rng.randint(low, high))
        if char.isprintable():  # what the service accepts
            chars.append(char)
    return "".join(chars)


def random_vectors(count: int, seed: int) -> list[Vector]:
    rng = random.Random(seed)
    return [
        Vector(
            environment_id=f"env-{rng.randrange(100)}",
            user_id=rng.choice(["alice", "bob", f"user-{rng.randrange(10**6)}", "zoë"]),
            challenge_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            expires_at=rng.randrange(1_700_000_000, 4_000_000_000),
            actions=(actions := tuple(rng.sample(ACTIONS, rng.randint(1, len(ACTIONS))))),
            payload_digest=rng.randbytes(32),
            display_text=_random_text(rng),
            single_use=bindable_use(actions, rng.random() < 0.5),
            session_id=rng.choice(["", "", f"session-{rng.randrange(1000)}", "sé😀"]),
        )
        for _ in range(count)
    ]


# --- the three implementations --------------------------------------------------------


def service_bound(v: Vector) -> approvals.Bound:
    approval = approvals.approval(
        tuple(Action[types.Action.Name(a).removeprefix("ACTION_")] for a in v.actions),
        v.payload_digest,
        v.display_text,
        single_use=v.single_use,
        session_id=v.session_id or None,
    )
    return approvals.bind(
        approval,
        environment_id=EnvironmentId(v.environment_id),
        user_id=UserId(v.user_id),
        challenge_id=uuid.UUID(v.challenge_id),
        expires_at=datetime.fromtimestamp(v.expires_at, UTC),
    )


def client_kwargs(v: Vector, *, as_timestamp: bool) -> dict[str, Any]:
    """``approval_hash``'s arguments, the expiry as a ChallengeResponse holds it or as seconds."""
    return {
        "environment_id": v.environment_id,
        "user_id": v.user_id,
        "challenge_id": v.challenge_id,
        "expires_at": Timestamp(seconds=v.expires_at) if as_timestamp else v.expires_at,
        "approval": v.approval(),
    }


@pytest.fixture(scope="module")
def node_hashes() -> Any:
    """A function sending vectors to the TypeScript client in one node process."""
    compile_client()

    def run(vectors: list[Vector]) -> list[dict[str, str]]:
        return node_approval_hashes(
            [
                {
                    "environmentId": v.environment_id,
                    "userId": v.user_id,
                    "challengeId": v.challenge_id,
                    "expiresAt": v.expires_at,
                    "asDate": i % 3 == 0,
                    "asTimestamp": i % 3 == 1,
                    "approval": json_format.MessageToDict(v.approval()),
                }
                for i, v in enumerate(vectors)
            ]
        )

    return run


# --- the tests ---------------------------------------------------------------------------


def test_the_documented_example_has_the_pinned_digest() -> None:
    """docs/approvals.md shows this encoding, this payload digest and this hash."""
    assert EXAMPLE.payload_digest.hex() == EXAMPLE_DIGEST_HEX
    assert approval_hash(**client_kwargs(EXAMPLE, as_timestamp=True)).hex() == EXAMPLE_HASH_HEX
    bound = service_bound(EXAMPLE)
    assert bound.hash.hex() == EXAMPLE_HASH_HEX

    doc = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)\n```", doc, flags=re.DOTALL)
    assert blocks == [bound.encoded]
    assert f"`{EXAMPLE_HASH_HEX}`" in doc


def test_the_three_implementations_agree(node_hashes: Any) -> None:
    vectors = FIXED + random_vectors(300, seed=19)
    from_node = node_hashes(vectors)
    for i, (vector, node) in enumerate(zip(vectors, from_node, strict=True)):
        bound = service_bound(vector)
        digest = approval_hash(**client_kwargs(vector, as_timestamp=i % 2 == 1))
        assert "error" not in node, (vector, node)
        assert bound.encoded == node["encoding"], vector
        assert digest.hex() == bound.hash.hex() == node["hash"], vector
    assert from_node[0]["hash"] == EXAMPLE_HASH_HEX


def test_the_clients_refuse_what_the_service_would_not_bind(node_hashes: Any) -> None:
    from_node = node_hashes(list(INVALID.values()))
    for (name, vector), node in zip(INVALID.items(), from_node, strict=True):
        with pytest.raises(ValueError):
            approval_hash(**client_kwargs(vector, as_timestamp=False))
        assert "error" in node, name
    with pytest.raises(ValueError, match="whole second"):
        approval_hash(
            **{
                **client_kwargs(EXAMPLE, as_timestamp=False),
                "expires_at": Timestamp(seconds=1796656800, nanos=1),
            }
        )
    (fraction,) = node_approval_hashes(
        [
            {
                "environmentId": EXAMPLE.environment_id,
                "userId": EXAMPLE.user_id,
                "challengeId": EXAMPLE.challenge_id,
                "expiresAt": 1796656800,
                "asTimestamp": True,
                "nanos": 1,
                "approval": json_format.MessageToDict(EXAMPLE.approval()),
            }
        ]
    )
    assert fraction == {"error": "expiresAt: a bound challenge expires at a whole second"}


def test_every_member_changes_the_hash() -> None:
    changed = [
        replace(EXAMPLE, environment_id="env-b"),
        replace(EXAMPLE, user_id="bob"),
        replace(EXAMPLE, challenge_id=str(uuid.UUID(int=1))),
        replace(EXAMPLE, expires_at=EXAMPLE.expires_at + 1),
        replace(EXAMPLE, actions=(types.ACTION_WAAS_EXPORT,)),
        replace(EXAMPLE, payload_digest=hashlib.sha256(b"pay 1.6 ETH to 0x12ab").digest()),
        replace(EXAMPLE, display_text="Send 1.5 ETH to 0x13…ab on Base"),
        replace(EXAMPLE, single_use=False),
        replace(EXAMPLE, session_id="s1"),
    ]
    hashes = {approval_hash(**client_kwargs(v, as_timestamp=False)) for v in [EXAMPLE, *changed]}
    assert len(hashes) == len(changed) + 1


_printable = st.characters(
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
) | st.just(" ")


@settings(max_examples=300, deadline=None, database=None)
@given(
    environment_id=st.text(min_size=1, max_size=40),
    user_id=st.text(min_size=1, max_size=40),
    challenge_id=st.uuids().map(str),
    expires_at=st.integers(min_value=0, max_value=253_402_300_799),
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, unique=True),
    payload_digest=st.binary(min_size=32, max_size=32),
    display_text=st.text(_printable, min_size=1, max_size=approvals.MAX_DISPLAY_TEXT).filter(
        str.isprintable
    ),
    single_use=st.booleans(),
    session_id=st.text(max_size=40),
)
def test_the_python_client_agrees_with_the_service(
    environment_id: str,
    user_id: str,
    challenge_id: str,
    expires_at: int,
    actions: list[types.Action.ValueType],
    payload_digest: bytes,
    display_text: str,
    single_use: bool,
    session_id: str,
) -> None:
    vector = Vector(
        environment_id,
        user_id,
        challenge_id,
        expires_at,
        tuple(actions),
        payload_digest,
        display_text,
        bindable_use(tuple(actions), single_use),
        session_id,
    )
    bound = service_bound(vector)
    assert approval_hash(**client_kwargs(vector, as_timestamp=True)) == bound.hash
