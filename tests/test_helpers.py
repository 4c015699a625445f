"""The test helpers can fail: a refusal for another reason, and a wait that never ends."""

from __future__ import annotations

import grpc
import pytest

from helpers import eventually, refused
from mfa_client import MfaServiceError

DENIED = grpc.StatusCode.PERMISSION_DENIED
FAILED = "ERROR_REASON_VERIFICATION_FAILED"


async def raising(error: Exception) -> None:
    raise error


async def answering() -> str:
    return "an answer"


async def test_refused_returns_the_expected_refusal() -> None:
    error = MfaServiceError(DENIED, "verification failed", FAILED)
    assert await refused(raising(error), DENIED, FAILED) is error


@pytest.mark.parametrize(
    "error",
    [
        MfaServiceError(DENIED, "no", "ERROR_REASON_STEP_UP_REQUIRED"),  # another reason
        MfaServiceError(grpc.StatusCode.INVALID_ARGUMENT, "typo", FAILED),  # another status
        MfaServiceError(DENIED, "no ErrorInfo"),  # no reason at all
    ],
)
async def test_refused_fails_for_any_other_refusal(error: MfaServiceError) -> None:
    with pytest.raises(AssertionError, match=f"expected PERMISSION_DENIED {FAILED}, got"):
        await refused(raising(error), DENIED, FAILED)


async def test_refused_fails_when_the_call_succeeds() -> None:
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        await refused(answering(), DENIED, FAILED)


async def test_refused_lets_other_exceptions_through() -> None:
    with pytest.raises(RuntimeError):
        await refused(raising(RuntimeError("a bug")), DENIED, FAILED)


async def test_eventually_returns_the_first_truthy_value() -> None:
    seen: list[int] = []

    def growing() -> list[int]:
        seen.append(len(seen))
        return seen if len(seen) >= 3 else []

    assert await eventually(growing, interval=0) == [0, 1, 2]

    async def at_once() -> str:
        return "ready"

    assert await eventually(at_once) == "ready"


async def test_eventually_fails_naming_what_it_awaited() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"not within 0\.1 s: the sky \(last value 0\)"):
        await eventually(lambda: 0, within=0.1, interval=0.01, what="the sky")
    with pytest.raises(pytest.fail.Exception, match=r"not within 0\.1 s: output so far"):
        await eventually(lambda: "", within=0.1, interval=0.01, what=lambda: "output so far")
