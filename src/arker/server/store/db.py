"""The async database: one SQLAlchemy engine per process, SQLite or PostgreSQL,
migrated by Alembic on open; and, for a SQLite file, plain sqlite3 writes
from worker threads for the run path (see `write_blocking`)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.from_thread
import anyio.to_thread
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.dml import UpdateBase

from arker.server.store.blocking import SqliteWriter

__all__ = ["Database", "MIGRATIONS_DIR"]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL fsyncs every
    # commit, so a SIGKILL (or power loss) never loses a committed row.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        self.blocking: SqliteWriter | None = None
        self._sqlite_path: str | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                self._sqlite_path = path
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self.blocking = SqliteWriter(path, lambda conn: _sqlite_pragmas(conn, None))
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic, programmatically)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)
        if self._sqlite_path is not None:
            await anyio.to_thread.run_sync(_incremental_vacuum, self._sqlite_path)

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file, when the database is one."""
        return self._sqlite_path

    def new_session(self) -> AsyncSession:
        return self.session()

    @property
    def writes_in_threads(self) -> bool:
        """Whether `write_blocking` writes in place (no hop to the loop)."""
        return self.blocking is not None

    async def write(self, statement: UpdateBase, params: dict[str, Any]) -> int:
        """Execute one write statement in a transaction of its own; return its
        row count."""
        if self.blocking is not None:
            return await anyio.to_thread.run_sync(self.write_blocking, statement, params)
        # One statement needs no BEGIN and COMMIT of its own: two round trips fewer.
        async with self._autocommit.connect() as conn:
            res = await conn.execute(statement, params)
        return res.rowcount

    async def write_all(self, steps: Sequence[tuple[UpdateBase, dict[str, Any]]]) -> list[int]:
        """Several write statements in one transaction; their row counts. On
        SQLite in this process's turn of writing (see SqliteWriter)."""
        if self.blocking is not None:
            return await anyio.to_thread.run_sync(self.blocking.write_all, steps)
        async with self.engine.begin() as conn:
            return [(await conn.execute(stmt, params)).rowcount for stmt, params in steps]

    def write_blocking(
        self, statement: UpdateBase, params: dict[str, Any], sync: bool = True
    ) -> int:
        """`write` from a worker thread (one that anyio started): in place on
        SQLite, through the event loop otherwise. `sync=False` lets SQLite skip
        this commit's fsync (see SqliteWriter.write); PostgreSQL commits as usual."""
        if self.blocking is None:
            return anyio.from_thread.run(self.write, statement, params)
        return self.blocking.write(statement, params, sync)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.blocking is not None:
            self.blocking.close()


def _incremental_vacuum(path: str) -> None:
    """Let the file give back pages freed by deletes (`PRAGMA incremental_vacuum`
    after sweeps). A file made without auto_vacuum needs one VACUUM to switch."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2: INCREMENTAL
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
    finally:
        conn.close()


def _upgrade(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # Replicas and host agents of a cluster start together: one migrates
        # at a time (the lock ends with the transaction).
        conn.execute(text("SELECT pg_advisory_xact_lock(87400008)"))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
