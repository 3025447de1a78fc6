"""What the database keeps of ended runs: a retention period (`--run-retention`)
swept in the background, and, on SQLite, the file given back as rows go
(auto_vacuum=INCREMENTAL, set by `Database.migrate`). PostgreSQL's autovacuum
reuses freed space by itself; a VACUUM FULL would lock the tables, so none is
run here."""

from __future__ import annotations

import logging
import sqlite3
import time

import anyio.to_thread
from sqlalchemy import delete

from arker._durations import parse_duration  # where `--run-retention` is read (0: forever)
from arker.server.batches import Batcher
from arker.server.periodic import Periodic
from arker.server.store import Database, Run

__all__ = ["Retention", "parse_duration"]

log = logging.getLogger("arker.server")

_ENDED = ("completed", "timed_out", "cancelled", "failed")


class Retention:
    """Deletes ended runs older than `retention_s`, every `interval_s`."""

    def __init__(self, db: Database, retention_s: float) -> None:
        self.db = db
        self.retention_s = retention_s
        self.interval_s = min(max(retention_s / 10, 1.0), 3600.0)
        self._periodic = Periodic("run retention sweep", self.interval_s, self.sweep)
        self._giver: Batcher[None] = Batcher(self._give_pass)

    def start(self) -> None:
        if self.retention_s > 0:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        await self._giver.drain()

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
