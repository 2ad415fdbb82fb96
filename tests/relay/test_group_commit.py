"""Group commit: shared commits, nothing answered before its commit, failures fail the batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pointd.relay.errors import NotStored
from pointd.relay.group_commit import GroupCommitter
from tests.relay.harness import IO_TIMEOUT


class GatedWriter:
    """A write_batch whose commits finish only when the test opens the gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail = False
        self.started = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        if self.fail:
            raise OSError("disk gone")
        return [item * 10 for item in items]


async def test_requests_share_commits_and_wait_for_them() -> None:
    writer = GatedWriter()
    committer: GroupCommitter[int, int] = GroupCommitter(writer, batch_max=4, batch_wait=0.0)
    committer.start()
    try:
        pending = [asyncio.create_task(committer.submit(n)) for n in range(10)]
        await asyncio.wait_for(writer.started.wait(), IO_TIMEOUT)
        assert not any(task.done() for task in pending)  # nothing answered before a commit
        writer.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*pending), IO_TIMEOUT)
    finally:
        await committer.stop()
    assert results == [n * 10 for n in range(10)]
    assert [len(batch) for batch in writer.batches] == [4, 4, 2]


async def test_batch_wait_gathers_late_arrivals() -> None:
    writer = GatedWriter()
    writer.gate.set()
    naps: list[float] = []
    arrivals: list[asyncio.Task[int]] = []
    committer: GroupCommitter[int, int]

    async def nap(delay: float) -> None:
        naps.append(delay)
        arrivals.extend(asyncio.create_task(committer.submit(n)) for n in (2, 3))
        await asyncio.sleep(0)

    committer = GroupCommitter(writer, batch_max=8, batch_wait=0.002, sleep=nap)
    committer.start()
    try:
        first = await asyncio.wait_for(committer.submit(1), IO_TIMEOUT)
        await asyncio.wait_for(asyncio.gather(*arrivals), IO_TIMEOUT)
    finally:
        await committer.stop()
    assert first == 10
    assert naps[0] == 0.002
    assert writer.batches[0] == [1, 2, 3]


async def test_a_failed_commit_fails_every_request_of_its_batch() -> None:
    writer = GatedWriter()
    writer.fail = True
    committer: GroupCommitter[int, int] = GroupCommitter(writer, batch_max=8, batch_wait=0.0)
    committer.start()
    try:
        pending = [asyncio.create_task(committer.submit(n)) for n in range(3)]
        await asyncio.sleep(0)
        writer.gate.set()
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await committer.stop()
    assert all(isinstance(outcome, NotStored) for outcome in outcomes)


async def test_a_cancelled_request_does_not_cancel_the_shared_commit() -> None:
    writer = GatedWriter()
    committer: GroupCommitter[int, int] = GroupCommitter(writer, batch_max=8, batch_wait=0.0)
    committer.start()
    try:
        quitter = asyncio.create_task(committer.submit(1))
        stayer = asyncio.create_task(committer.submit(2))
        await asyncio.wait_for(writer.started.wait(), IO_TIMEOUT)
        quitter.cancel()
        writer.gate.set()
        assert await asyncio.wait_for(stayer, IO_TIMEOUT) == 20
    finally:
        await committer.stop()


async def test_submit_without_a_running_committer_is_not_stored() -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(GatedWriter(), batch_max=1, batch_wait=0)
    with pytest.raises(NotStored):
        await committer.submit(1)
