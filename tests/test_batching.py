"""MicroBatcher: concurrent submissions share a run; each gets its own answer or error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mfa_service.services.batching import MicroBatcher


class Recorder:
    """A ``run`` that records its batches and waits for a release before answering."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [item.upper() for item in items]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_first_goes_alone_and_those_arriving_meanwhile_go_together() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=64, max_in_flight=1)
    first = asyncio.create_task(batcher.submit("a"))
    await settle()
    rest = [asyncio.create_task(batcher.submit(x)) for x in "bcd"]
    await settle()
    assert run.batches == [["a"]]  # b, c, d wait for the statement in flight
    run.release.set()
    assert await first == "A"
    assert [await t for t in rest] == ["B", "C", "D"]
    assert run.batches == [["a"], ["b", "c", "d"]]


async def test_batches_are_bounded_in_size_and_in_number_in_flight() -> None:
    run = Recorder()
    sizes: list[int] = []
    batcher = MicroBatcher(run, max_batch=2, max_in_flight=2, on_batch=sizes.append)
    tasks = [asyncio.create_task(batcher.submit(x)) for x in "abcdefg"]
    await settle()
    assert run.batches == [["a", "b"], ["c", "d"]]  # two in flight; e, f, g wait
    run.release.set()
    assert [await t for t in tasks] == list("ABCDEFG")
    assert run.batches == [["a", "b"], ["c", "d"], ["e", "f"], ["g"]]
    assert sizes == [2, 2, 2, 1]


async def test_items_with_one_conflict_key_never_share_a_batch() -> None:
    run = Recorder()
    run.release.set()
    batcher = MicroBatcher(run, max_batch=64, max_in_flight=1, conflict_key=lambda x: x[0])
    tasks = [asyncio.create_task(batcher.submit(x)) for x in ("k1", "k2", "m1", "k3")]
    assert [await t for t in tasks] == ["K1", "K2", "M1", "K3"]
    # Order is kept; a conflicting item waits for the next batch.
    assert run.batches == [["k1", "m1"], ["k2"], ["k3"]]


async def test_a_failed_batch_fails_its_items_and_the_next_batch_runs() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_in_flight=1)
    first = asyncio.create_task(batcher.submit("a"))
    await settle()
    second = asyncio.create_task(batcher.submit("b"))
    await settle()
    run.fail = ValueError("statement failed")
    run.release.set()
    with pytest.raises(ValueError, match="statement failed"):
        await first
    with pytest.raises(ValueError):  # its own batch failed the same way, after
        await second
    assert run.batches == [["a"], ["b"]]
    run.fail = None
    assert await batcher.submit("c") == "C"


async def test_an_outage_fails_the_waiting_items_at_once() -> None:
    run = Recorder()
    batcher = MicroBatcher(
        run, max_in_flight=1, fails_all=lambda error: isinstance(error, ConnectionError)
    )
    first = asyncio.create_task(batcher.submit("a"))
    await settle()
    waiting = [asyncio.create_task(batcher.submit(x)) for x in "bc"]
    await settle()
    run.fail = ConnectionError("database down")
    run.release.set()
    for task in (first, *waiting):
        with pytest.raises(ConnectionError):
            await task
    assert run.batches == [["a"]]  # b and c were never sent: they would only wait again


async def test_requests_of_one_event_loop_turn_go_together() -> None:
    run = Recorder()
    run.release.set()
    batcher = MicroBatcher(run, max_in_flight=1)
    first = await asyncio.gather(*(batcher.submit(x) for x in "abc"))
    assert first == ["A", "B", "C"]
    assert run.batches == [["a", "b", "c"]]  # not "a" alone: it waited one turn for b and c


async def test_a_cancelled_caller_is_left_out_of_the_next_batch() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_in_flight=1)
    first = asyncio.create_task(batcher.submit("a"))
    await settle()
    gone = asyncio.create_task(batcher.submit("b"))
    kept = asyncio.create_task(batcher.submit("c"))
    await settle()
    gone.cancel()
    run.release.set()
    assert await first == "A"
    assert await kept == "C"
    assert gone.cancelled()
    assert run.batches == [["a"], ["c"]]


async def test_a_batch_cancelled_before_it_ran_does_not_stall_the_next() -> None:
    run = Recorder()
    run.release.set()
    batcher = MicroBatcher(run, max_in_flight=1)
    waiting = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0)  # submitted; its batch task exists but has not run
    for task in list(batcher._in_flight):
        task.cancel()
    # "a" was never taken: the next batch takes it, without another submission.
    assert await asyncio.wait_for(waiting, timeout=1) == "A"
    assert run.batches == [["a"]]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0)
