"""The store: SQLite settings that make commits survive a SIGKILL, migrations
that run twice harmlessly, and the key functions behind `arker keys`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from arker.cli.server import create_key as cli_create_key
from arker.cli.server import revoke_key as cli_revoke_key
from arker.server.auth import create_key, hash_key, list_keys, revoke_key
from arker.server.store import Database


async def test_sqlite_is_wal_and_fully_synchronous(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    try:
        await db.migrate()
        await db.migrate()  # already at head: nothing to do
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
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
