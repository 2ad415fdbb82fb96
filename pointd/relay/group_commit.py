"""Group commit: concurrent intake requests share one durable commit, and none is answered early.

Theory of operation. Each request puts its item on a queue and awaits a future. One
flusher task takes the first waiting item, lets others join for at most ``batch_wait``
seconds (skipped when ``batch_max`` are already waiting), writes up to ``batch_max`` items
in one commit and only then resolves every future in the batch. While a commit is in flight
new items gather for the next one, so under load batches grow by themselves. A failed
commit fails every request of its batch (the sender retries); none is told "stored".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from pointd.relay.errors import NotStored

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


class GroupCommitter(Generic[_Item, _Result]):
    """Batch concurrent writes into shared commits."""

    def __init__(
        self,
        write_batch: Callable[[Sequence[_Item]], Awaitable[list[_Result]]],
        *,
        batch_max: int,
        batch_wait: float,
        on_commit: Callable[[int, float], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._write_batch = write_batch
        self._batch_max = batch_max
        self._batch_wait = batch_wait
        self._on_commit = on_commit
        self._sleep = sleep
        self._monotonic = monotonic
        self._queue: asyncio.Queue[tuple[_Item, asyncio.Future[_Result]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the flusher task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Stop the flusher; items still queued fail with NotStored."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _item, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(NotStored("relay is stopping"))

    async def submit(self, item: _Item) -> _Result:
        """Queue an item and return its result once its batch is committed."""
        if self._task is None:
            raise NotStored("group commit is not running")
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        # A request cancelled here (its client went away) cancels only its own future: the
        # item stays in its batch, the flusher skips futures already done, and the commit
        # other requests share goes on.
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._batch_wait > 0 and self._queue.qsize() + 1 < self._batch_max:
                await self._sleep(self._batch_wait)
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._flush(batch)

    async def _flush(self, batch: list[tuple[_Item, asyncio.Future[_Result]]]) -> None:
        started = self._monotonic()
        try:
            results = await self._write_batch([item for item, _future in batch])
        except asyncio.CancelledError:
            for _item, future in batch:
                if not future.done():
                    future.set_exception(NotStored("relay is stopping"))
            raise
        except Exception as exc:  # every failure means "not stored" to the sender
            error = exc if isinstance(exc, NotStored) else NotStored(f"commit failed: {exc}")
            for _item, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        if self._on_commit is not None:
            self._on_commit(len(batch), self._monotonic() - started)
        for (_item, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
