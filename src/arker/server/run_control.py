"""Reading a run and acting on one in flight, part of the service layer: its
status (with a window of its output), its events, its stdin, signals and
cancel. The runs themselves (starting, driving, recording, recovery) are
runs.py; this reads what they record and what the engine holds live.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import select, update

from arker import _types as t
from arker.engine.base import OutputChunk
from arker.errors import ArkerError, ErrorCode
from arker.server import wire
from arker.server.events import Source, format_event, run_events
from arker.server.runs import IN_FLIGHT, Runs
from arker.server.store import Run

__all__ = ["SIGNALS", "RunControl", "Window"]

WINDOW_BYTES = 1 << 20  # the most of each stream a windowed status carries
STDIN_WAIT_S = 60.0  # how long a write to a run's stdin waits for the command to read
SIGNALS = {
    s.name: int(s)
    for s in (
        signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGHUP, signal.SIGQUIT,
        signal.SIGUSR1, signal.SIGUSR2, signal.SIGSTOP, signal.SIGCONT, signal.SIGWINCH,
        signal.SIGALRM, signal.SIGPIPE,
    )
}  # fmt: skip


@dataclass(frozen=True)
class Window:
    """What of a run's output a status carries: none, or each stream from
    an offset (at most WINDOW_BYTES, up to any dropped middle)."""

    output: bool = True
    stdout_after: int | None = None
    stderr_after: int | None = None


class RunControl:
    def __init__(self, runs: Runs) -> None:
        self.runs = runs
        self.db, self.engine, self.threads = runs.db, runs.engine, runs.threads

    async def _row(self, org: str, vm_id: str, run_id: str) -> Run:
        # Asked by org and VM too: another org's run and one that never existed
        # take the same query to the same answer.
        async with self.db.session() as s:
            row = await s.scalar(
                select(Run).where(Run.id == run_id, Run.org == org, Run.vm_id == vm_id)
            )
        if row is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"run {run_id!r} not found in vm {vm_id!r}")
        return row

    async def status(
        self, org: str, vm_id: str, run_id: str, window: Window | None = None
    ) -> t.RunStatus:
        """The run now; `window` picks what of its output goes in the answer
        (live output is then read by offset, never whole: a poll costs no more
        memory than its answer)."""
        row = await self._row(org, vm_id, run_id)
        if window is not None:
            source = self._live_reader(row)
            limit = WINDOW_BYTES if window.output else 0
            afters = {"stdout": window.stdout_after or 0, "stderr": window.stderr_after or 0}
            # None: in flight but not in the engine (being recovered): nothing yet.
            out, err = (
                source.read(name, at, limit) or OutputChunk(at, b"", at)
                for name, at in afters.items()
            )
            return wire.run_status(row, output=window.output, window=(out, err))
        live = None
        if row.state in IN_FLIGHT:
            try:
                live = await self.threads.call(self.engine.run_info, vm_id, run_id)
            except ArkerError:
                live = None  # not started again yet after a restart
        return wire.run_status(row, live)

    def _live_reader(self, row: Run) -> Source:
        source = Source(self.engine, row.vm_id, row.id, live=row.state in IN_FLIGHT)
        if row.state not in IN_FLIGHT:
            source.row = row
        return source

    async def events(
        self, org: str, vm_id: str, run_id: str, offsets: tuple[int, int]
    ) -> AsyncIterator[bytes]:
        """The run's events from `offsets` (see events.py); raises not_found
        before the first byte, like every other call."""
        row = await self._row(org, vm_id, run_id)

        async def ended() -> Run | None:
            if self.runs.driven_here(run_id):
                return None  # driven here: its end wakes the stream
            async with self.db.session() as s:
                now = await s.get(Run, run_id)
            return now if now is not None and now.state not in IN_FLIGHT else None

        def end_event(final: Run) -> bytes:
            status = wire.run_status(final, output=False)
            return format_event("end", status.model_dump_json())

        return run_events(self._live_reader(row), offsets, ended, end_event, self.runs.wakeups)

    async def _running(self, org: str, vm_id: str, run_id: str, what: str) -> Run:
        row = await self._row(org, vm_id, run_id)
        if row.state not in IN_FLIGHT:
            raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} has ended: cannot {what}")
        return row

    async def write_stdin(
        self, org: str, vm_id: str, run_id: str, data: bytes, close: bool
    ) -> t.RunStdinWritten:
        await self._running(org, vm_id, run_id, "write to its stdin")
        sent = 0
        if data:
            sent = await self.threads.call(
                self.engine.write_stdin, vm_id, run_id, data, STDIN_WAIT_S
            )
            if sent < len(data):
                raise ArkerError(
                    ErrorCode.UNAVAILABLE,
                    f"run {run_id!r} did not read its stdin for {STDIN_WAIT_S:g} s: "
                    f"{sent} of {len(data)} bytes went in",
                    details={"bytes_written": sent},
                )
        if close:
            await self.threads.call(self.engine.close_stdin, vm_id, run_id)
        return t.RunStdinWritten(bytes_written=sent, closed=close)

    async def signal(self, org: str, vm_id: str, run_id: str, name: str) -> t.RunStatus:
        signum = SIGNALS.get(name)
        if signum is None:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                f"unknown signal {name!r}: one of {', '.join(sorted(SIGNALS))}",
                422,
                details={"field": "signal"},
            )
        await self._running(org, vm_id, run_id, "signal it")
        await self.threads.call(self.engine.signal_run, vm_id, run_id, signum)
        return await self.status(org, vm_id, run_id, Window(output=False))

    async def cancel(self, org: str, vm_id: str, run_id: str) -> t.RunStatus:
        row = await self._row(org, vm_id, run_id)
        if row.state in IN_FLIGHT:
            try:
                info = await self.threads.call(self.engine.cancel_run, vm_id, run_id)
            except ArkerError:
                info = None
            if info is not None and info.done:
                await self.runs.record_end(row, info)
            async with self.db.session() as s:
                await s.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.state.in_(IN_FLIGHT))
                    .values(state="cancelled", finished_at=time.time())
                )
                await s.commit()
            row = await self._row(org, vm_id, run_id)
        return wire.run_status(row)
