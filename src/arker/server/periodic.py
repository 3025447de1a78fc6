"""A background pass run every so often (run retention, the VM lifecycle
sweep): one task, started and stopped with the service; a failed pass is
logged and tried again next time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Periodic"]

log = logging.getLogger("arker.server")


class Periodic:
    def __init__(self, what: str, interval_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
        self.what = what
        self.interval_s = interval_s
        self._fn = fn
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self._fn()
            except Exception:
                log.warning("%s failed", self.what, exc_info=True)
            await asyncio.sleep(self.interval_s)
