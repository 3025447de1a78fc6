"""A fresh PostgreSQL database per test (or per e2e session), dropped after.
The server is given ARKER_TEST_POSTGRES_URL (CI starts PostgreSQL for it)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["PG_URL", "fresh_pg_database"]

PG_URL = os.environ.get("ARKER_TEST_POSTGRES_URL")


@asynccontextmanager
async def fresh_pg_database(base_url: str) -> AsyncIterator[str]:
    """A new empty PostgreSQL database for one test, dropped after."""
    import asyncpg

    name = "arker_t_" + uuid.uuid4().hex[:12]
    dsn = base_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield base_url.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _admin_sync(base_url: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(base_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def create_database_sync(base_url: str) -> tuple[str, str]:
    """For sync fixtures: (url, name) of a new database; drop it with
    `drop_database_sync`. (An async context manager cannot span two
    asyncio.run calls: the first loop's shutdown finalises it.)"""
    name = "arker_e_" + uuid.uuid4().hex[:12]
    _admin_sync(base_url, f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + "/" + name, name


def drop_database_sync(base_url: str, name: str) -> None:
    _admin_sync(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
