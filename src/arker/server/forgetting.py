"""Dropping ended runs' output in the engine: in batches, a little after the
runs have been answered. One thread hop serves the whole batch, and none sits
on a run's path (the engine's forget takes the VM's lock, which the next
run's start needs)."""

from __future__ import annotations

import asyncio
import logging

from arker.engine.base import Engine
from arker.errors import ArkerError
from arker.server.threads import Threads

__all__ = ["Forgetter"]

log = logging.getLogger("arker.server")

FORGET_AFTER_S = 0.1


class Forgetter:
    def __init__(self, engine: Engine, threads: Threads, after_s: float = FORGET_AFTER_S) -> None:
        self.engine = engine
        self.threads = threads
        self.after_s = after_s
        self._pending: list[tuple[str, str]] = []
        self._task: asyncio.Task[None] | None = None

    def later(self, vm_id: str, run_id: str) -> None:
        """Forget the ended run within `after_s`, with the others ended meanwhile."""
        self._pending.append((vm_id, run_id))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_later(self.after_s, self._start)

    async def flush(self) -> None:
        """Forget every run handed over so far (at a stop, say)."""
        self._start()
        if self._task is not None:
            await self._task

    def _start(self) -> None:
        if self._task is None and self._pending:
            self._task = asyncio.get_running_loop().create_task(self._forget_pending())

    async def _forget_pending(self) -> None:
        try:
            while self._pending:  # runs that end during a hop go in the next
                batch, self._pending = self._pending, []
                await self.threads.call(self._forget, batch)
        finally:
            self._task = None

    def _forget(self, runs: list[tuple[str, str]]) -> None:
        for vm_id, run_id in runs:
            try:
                self.engine.forget_run(vm_id, run_id)
            except ArkerError:
                pass  # its VM was deleted meanwhile
            except Exception:  # one run that cannot be dropped must not keep the others
                log.warning("could not forget run %s of vm %s", run_id, vm_id, exc_info=True)
