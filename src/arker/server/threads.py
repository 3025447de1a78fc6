"""Engine calls block, so they run in worker threads. Two limiters: short calls
(fork, start, files) share a small pool; waits for runs to end can take hours,
so they get their own large one and never starve the short calls."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ["Threads"]

T = TypeVar("T")


class Threads:
    def __init__(self, ops: int, waits: int = 4096) -> None:
        self._ops = anyio.CapacityLimiter(ops)
        self._waits = anyio.CapacityLimiter(waits)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._ops)

    async def wait(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # abandon_on_cancel: a shutdown must not hang on a run that never ends;
        # engine.close() then makes the abandoned thread return.
        return await anyio.to_thread.run_sync(
            partial(fn, *args, **kwargs), limiter=self._waits, abandon_on_cancel=True
        )
