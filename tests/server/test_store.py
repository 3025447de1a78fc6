"""The store: SQLite settings that make commits survive a SIGKILL, migrations
that run twice harmlessly, and the key functions behind `arker keys`."""

from __future__ import annotations

import time
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from arker.cli.server import create_key as cli_create_key
from arker.cli.server import revoke_key as cli_revoke_key
from arker.server.auth import create_key, hash_key, list_keys, revoke_key
from arker.server.store import Database, Run


async def test_sqlite_is_wal_and_fully_synchronous(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    try:
        await db.migrate()
        await db.migrate()  # already at head: nothing to do
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
        # The run path writes through a second engine, from worker threads:
        # its commits must be as durable.
        assert db.blocking is not None and db.writes_in_threads
        with db.blocking.connection() as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert raw.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        await db.close()


def _run_row(run_id: str) -> dict[str, object]:
    now = time.time()
    return {
        "id": run_id,
        "vm_id": "vm",
        "org": "acme",
        "state": "running",
        "background": False,
        "spec": "{}",
        "request_hash": "h",
        "idem_key": run_id,
        "created_at": now,
        "started_at": now,
    }


async def test_writes_from_the_loop_and_from_a_worker_thread(database_url: str) -> None:
    """`write` and `write_blocking` commit one statement each and count its
    rows, whichever side of the thread boundary they are called from."""
    db = Database(database_url)
    finish = update(Run).where(Run.id == bindparam("finish_id"), Run.state == "running")
    try:
        await db.migrate()
        assert await db.write(insert(Run), _run_row("r1")) == 1
        count = await anyio.to_thread.run_sync(db.write_blocking, insert(Run), _run_row("r2"))
        assert count == 1
        done = {"state": "completed", "exit_code": 0}
        assert await db.write(finish, {"finish_id": "r2", **done}) == 1
        count = await anyio.to_thread.run_sync(
            db.write_blocking, finish, {"finish_id": "r1", **done}
        )
        assert count == 1
        assert await db.write(finish, {"finish_id": "r1", **done}) == 0  # finished already
        # The run path tells a retry by the unique key's IntegrityError, whichever way.
        with pytest.raises(IntegrityError):
            await db.write(insert(Run), _run_row("r1"))
        with pytest.raises(IntegrityError):
            await anyio.to_thread.run_sync(db.write_blocking, insert(Run), _run_row("r2"))
        async with db.session() as s:
            states = {r.id: r.state for r in await s.execute(select(Run.id, Run.state))}
        assert states == {"r1": "completed", "r2": "completed"}
    finally:
        await db.close()


async def test_an_unsynced_write_commits_and_leaves_the_connection_synced(
    tmp_path: Path,
) -> None:
    """A foreground run's record skips its own fsync; the write still commits,
    and the connection goes back to synchronous=FULL for the next writer, also
    after the statement failed."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    try:
        await db.migrate()
        assert db.blocking is not None
        assert db.blocking.write(insert(Run), _run_row("r1"), sync=False) == 1
        with pytest.raises(IntegrityError):
            db.blocking.write(insert(Run), _run_row("r1"), sync=False)
        with db.blocking.connection() as raw:
            assert raw.execute("PRAGMA synchronous").fetchone() == (2,)
        async with db.session() as s:  # another connection sees it committed
            assert [r.id for r in await s.scalars(select(Run))] == ["r1"]
    finally:
        await db.close()


async def test_keys_are_stored_hashed(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.migrate()
        record, secret = await create_key(db, "acme", name="ci")
        assert secret.startswith("ark_live_") and len(secret) > 40
        async with db.engine.connect() as conn:
            stored = (await conn.execute(text("SELECT key_hash FROM api_keys"))).scalar()
        assert stored == hash_key(secret) and secret not in str(stored)
        assert [(k.id, k.org, k.name) for k in await list_keys(db)] == [(record.id, "acme", "ci")]
        assert await revoke_key(db, record.id)
        assert await revoke_key(db, record.id)  # revoked already: still known
        assert not await revoke_key(db, "key_nope")
        assert (await list_keys(db))[0].revoked_at is not None
    finally:
        await db.close()


def test_cli_key_helpers(tmp_path: Path) -> None:
    key_id, secret = cli_create_key(tmp_path, name="demo")
    assert secret.startswith("ark_live_")
    assert cli_revoke_key(tmp_path, key_id)
    assert not cli_revoke_key(tmp_path, "key_nope")
