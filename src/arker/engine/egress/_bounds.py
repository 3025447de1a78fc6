"""What the forwarder and the proxy both keep: a count of what each VM holds
open against a bound per VM and one overall, so that one VM cannot starve the
others; and the set of their tasks, so that close() leaves none running."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

__all__ = ["PerVmSlots", "TaskSet"]


class PerVmSlots:
    def __init__(self, total: int, per_vm: int) -> None:
        self._total, self._per_vm = total, per_vm
        self._held: Counter[str] = Counter()

    def acquire(self, ip: str) -> bool:
        """Take a slot for `ip`, or False when it or everyone is at the bound."""
        if self._held.total() >= self._total or self._held[ip] >= self._per_vm:
            return False
        self._held[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self._held[ip] -= 1
        if self._held[ip] <= 0:
            del self._held[ip]


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def track(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
