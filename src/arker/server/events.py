"""A run's output as Server-Sent Events, and the wake-ups that drive them.

Each `stdout`/`stderr` event carries base64 bytes; its `id` is both streams'
byte offsets after it (`1024:0`), so one Last-Event-ID resumes both. Bytes
the server no longer holds (the middle of a stream past its cap) become one
`gap` event; the last event is `end`, with the run's RunStatus. A comment
goes every 15 s so proxies keep the connection.

While the run goes, the bytes are read from the engine by offset (never
blocking: cheap enough for the event loop) when the engine's counters wake
the stream; a run that has ended is replayed from what the database kept.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from arker.engine.base import Engine, OutputChunk
from arker.errors import ArkerError, ErrorCode
from arker.server.store import Run

__all__ = ["Source", "Wakeups", "format_event", "parse_offsets", "run_events", "stored_chunk"]

CHUNK_BYTES = 64 * 1024  # the most one event carries
KEEPALIVE_S = 15.0
# An engine with no counters to watch (a cluster's remote engine: fds do not
# cross machines) is asked again this often while a stream waits.
NO_WAKERS_POLL_S = 0.05
STREAMS = ("stdout", "stderr")
_OFFSETS = re.compile(r"(\d{1,19}):(\d{1,19})")


def parse_offsets(
    last_event_id: str | None, stdout_after: int | None, stderr_after: int | None
) -> tuple[int, int]:
    """Where a stream starts: the query's offsets, else Last-Event-ID's, else 0."""
    out = err = 0
    if last_event_id:
        m = _OFFSETS.fullmatch(last_event_id.strip())
        if m is None:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                f"Last-Event-ID must be STDOUT:STDERR byte offsets, not {last_event_id[:40]!r}",
                422,
            )
        out, err = int(m.group(1)), int(m.group(2))
    if stdout_after is not None:
        out = stdout_after
    if stderr_after is not None:
        err = stderr_after
    return out, err


def format_event(event: str, data: str, offsets: tuple[int, int] | None = None) -> bytes:
    lines = [f"event: {event}"]
    if offsets is not None:
        lines.append(f"id: {offsets[0]}:{offsets[1]}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


def data_event(stream: str, data: bytes, offsets: tuple[int, int]) -> bytes:
    return format_event(stream, base64.b64encode(data).decode("ascii"), offsets)


def gap_event(stream: str, start: int, end: int, offsets: tuple[int, int]) -> bytes:
    body = {"stream": stream, "from": start, "to": end, "bytes": end - start}
    return format_event("gap", json.dumps(body), offsets)


KEEPALIVE = b": keep-alive\n\n"


def stored_chunk(data: bytes, total: int | None, offset: int, limit: int) -> OutputChunk:
    """What a stored stream holds from `offset`, with the engine's rule: past
    its cap a stream is kept as its head and its tail, len(data) // 2 bytes of
    head first (rows from before totals were kept count as whole)."""
    if total is None or total <= len(data):
        total = len(data) if total is None else total
        start = min(offset, total)
        return OutputChunk(start, data[start : start + limit], total)
    head = len(data) // 2
    if offset < head:
        return OutputChunk(offset, data[offset : min(head, offset + limit)], total)
    tail_start = total - (len(data) - head)
    start = max(offset, tail_start)
    at = head + (start - tail_start)
    return OutputChunk(min(start, total), data[at : at + limit], total)


@dataclass
class _Watch:
    fds: tuple[int, ...]
    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    watching: bool = False


class Wakeups:
    """Who waits for a run's next output. The engine's counters (eventfds)
    are watched only while a stream waits: level-triggered, they would wake
    the loop for nothing while every stream is busy sending."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._runs: dict[str, _Watch] = {}
        self.closing = asyncio.Event()  # the server is stopping: streams end
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self, vm_id: str, run_id: str, timeout_s: float) -> None:
        """Until the run has new output or has ended (`wake`), or `timeout_s`."""
        loop = self._loop = asyncio.get_running_loop()
        watch = self._runs.get(run_id)
        if watch is None:
            try:
                fds = self.engine.output_wakers(vm_id, run_id)
            except ArkerError:
                fds = ()  # the engine has let go of it: ended, or not here
            watch = self._runs[run_id] = _Watch(fds)
        if not watch.fds:
            timeout_s = min(timeout_s, NO_WAKERS_POLL_S)
        waiter: asyncio.Future[None] = loop.create_future()
        watch.waiters.add(waiter)
        if not watch.watching and watch.fds:
            for fd in watch.fds:
                loop.add_reader(fd, self.wake, run_id)
            watch.watching = True
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            pass
        finally:
            watch.waiters.discard(waiter)
            if not watch.waiters and self._runs.get(run_id) is watch:
                self._unwatch(run_id)  # not a newer watch that replaced a woken one

    def wake(self, run_id: str) -> None:
        """New output, or the run ended: every stream waiting on it goes on."""
        watch = self._runs.get(run_id)
        if watch is None:
            return
        for waiter in watch.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._unwatch(run_id)

    def _unwatch(self, run_id: str) -> None:
        watch = self._runs.pop(run_id, None)
        if watch is None:
            return
        loop = asyncio.get_running_loop()
        for fd in watch.fds:
            if watch.watching:
                loop.remove_reader(fd)
            os.close(fd)  # our own copies (see Engine.output_wakers)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the streams run on (at the service's start): a stop can
        come before any stream has waited."""
        self._loop = loop

    def close_soon(self) -> None:
        """`close` from a signal handler: the server was told to stop, and
        its streams must end before it waits for open connections."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        self.closing.set()
        for run_id in list(self._runs):
            self.wake(run_id)


class Source:
    """Where a run's bytes are read from: the engine while it holds the run,
    then the row the database kept (same offsets, same head-and-tail rule)."""

    def __init__(self, engine: Engine, vm_id: str, run_id: str, live: bool) -> None:
        self.engine = engine
        self.vm_id = vm_id
        self.run_id = run_id
        self.live = live
        self.row: Run | None = None  # once the run has ended

    def read(self, stream: str, offset: int, limit: int = CHUNK_BYTES) -> OutputChunk | None:
        if self.live:
            try:
                return self.engine.read_output(self.vm_id, self.run_id, stream, offset, limit)
            except ArkerError:
                self.live = False  # let go of (ended and stored), or never here
        if self.row is None:
            return None
        data = self.row.stdout if stream == "stdout" else self.row.stderr
        total = self.row.stdout_bytes if stream == "stdout" else self.row.stderr_bytes
        return stored_chunk(data, total, offset, limit)


async def run_events(
    source: Source,
    offsets: tuple[int, int],
    ended: Callable[[], Awaitable[Run | None]],
    end_event: Callable[[Run], bytes],
    wakeups: Wakeups,
) -> AsyncIterator[bytes]:
    """The events from `offsets` on: output while the run goes, the rest of
    it once it has ended, then `end`. `ended()` is the run's row once it has
    ended, else None."""
    pos = list(offsets)
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while True:
        sent = False
        for i, name in enumerate(STREAMS):
            chunk = source.read(name, pos[i])
            if chunk is None:
                continue
            if chunk.start > pos[i]:
                start, pos[i] = pos[i], chunk.start
                yield gap_event(name, start, chunk.start, (pos[0], pos[1]))
            if chunk.data:
                pos[i] = chunk.end
                yield data_event(name, chunk.data, (pos[0], pos[1]))
                sent = True
        if sent:
            quiet_since = loop.time()
            continue
        if source.row is not None:  # ended, and every byte there is sent
            yield end_event(source.row)
            return
        if wakeups.closing.is_set():
            return  # the server stops: the client resumes from its offsets
        row = await ended()
        if row is not None:
            source.row = row  # one more pass: what came before the end
            continue
        # Wait for output (or the end); without the engine's counters (the
        # run is being recovered, or driven by another server), look again soon.
        left = KEEPALIVE_S - (loop.time() - quiet_since)
        await wakeups.wait(source.vm_id, source.run_id, min(left, 1.0 if not source.live else left))
        if loop.time() - quiet_since >= KEEPALIVE_S:
            quiet_since = loop.time()
            yield KEEPALIVE
