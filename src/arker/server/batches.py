"""Group commit: many callers' items done in one pass by one task.

SQLite has one writer at a time, and a writer that finds the lock taken
sleeps in its busy handler with a growing back-off. A hundred VM deletes at
once, a transaction each, left another VM's run waiting 2.3 s for the lock.
Handed to a `Batcher`, they become a few transactions, one after another.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")


class Batcher(Generic[T]):
    """`await submit(item)` returns once a pass of `work` that started after
    the call has taken `item`, and raises what that pass raised. Items that
    come while a pass runs wait for the next one, which takes them all (up
    to `most`: a pass is one transaction, and must stay a short one)."""

    def __init__(self, work: Callable[[list[T]], Awaitable[None]], most: int = 256) -> None:
        self._work = work
        self._most = most
        # Batches not taken yet, oldest first; only the last one takes items.
        self._batches: deque[tuple[list[T], asyncio.Future[None]]] = deque()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        if not self._batches or len(self._batches[-1][0]) >= self._most:
            self._batches.append(([], loop.create_future()))
        items, done = self._batches[-1]
        items.append(item)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._passes())
        # The pass goes on if this caller is cancelled: others share it.
        await asyncio.shield(done)

    async def _passes(self) -> None:
        while self._batches:
            items, done = self._batches.popleft()
            try:
                await self._work(items)
            except Exception as exc:  # every caller of this pass gets it
                done.set_exception(exc)
                done.exception()  # marked retrieved: its callers may all have gone
            else:
                done.set_result(None)

    async def drain(self) -> None:
        """Wait for the passes in progress and queued (at shutdown)."""
        if self._task is not None:
            await self._task
