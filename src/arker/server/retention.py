"""What the database keeps of ended runs: a retention period (`--run-retention`)
swept in the background, and, on SQLite, the file given back as rows go
(auto_vacuum=INCREMENTAL, set by `Database.migrate`). PostgreSQL's autovacuum
reuses freed space by itself; a VACUUM FULL would lock the tables, so none is
run here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time

import anyio.to_thread
from sqlalchemy import delete

from arker.server.batches import Batcher
from arker.server.store import Database, Run

__all__ = ["Retention", "parse_duration"]

log = logging.getLogger("arker.server")

_ENDED = ("completed", "timed_out", "cancelled", "failed")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`7d`, `12h`, `30m`, `45s` or plain seconds; 0 means forever."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (try 7d, 12h, 30m or seconds)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


class Retention:
    """Deletes ended runs older than `retention_s`, every `interval_s`."""

    def __init__(self, db: Database, retention_s: float) -> None:
        self.db = db
        self.retention_s = retention_s
        self.interval_s = min(max(retention_s / 10, 1.0), 3600.0)
        self._task: asyncio.Task[None] | None = None
        self._giver: Batcher[None] = Batcher(self._give_pass)

    def start(self) -> None:
        if self.retention_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._giver.drain()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # a failed sweep is tried again next time
                log.warning("run retention sweep failed", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def sweep(self, now: float | None = None) -> int:
        """Delete ended runs that finished more than retention_s ago; return how many."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        async with self.db.session() as s:
            res = await s.execute(
                delete(Run).where(Run.finished_at < cutoff, Run.state.in_(_ENDED))
            )
            await s.commit()
        count: int = res.rowcount  # type: ignore[attr-defined]
        if count:
            log.info("deleted %d run(s) past the retention of %g s", count, self.retention_s)
            await self.give_back()
        return count

    async def give_back(self) -> None:
        """On SQLite, return freed pages to the filesystem (auto_vacuum=INCREMENTAL).

        Callers that come while a pass runs share the next one: its checkpoint
        waits for every reader and holds up writers."""
        if self.db.blocking is not None:
            await self._giver.submit(None)

    async def _give_pass(self, _callers: list[None]) -> None:
        writer = self.db.blocking
        assert writer is not None
        try:
            await anyio.to_thread.run_sync(writer.in_turn, _give_back)
        except sqlite3.Error:  # what was freed is given back on a later pass
            log.warning("could not give the database's free pages back", exc_info=True)


def _give_back(conn: sqlite3.Connection) -> None:
    # The pragma frees one page per step, and execute() steps it once;
    # executescript steps every statement to its end.
    conn.executescript("PRAGMA incremental_vacuum;")
    # In WAL mode the file shrinks when the log is written back into it.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
