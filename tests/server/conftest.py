"""Fixtures: the app over a FakeEngine on SQLite (and PostgreSQL when
ARKER_TEST_POSTGRES_URL is set), keys for two orgs, and an HTTP client whose
every response is checked against the contract."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # contract_check

from contract_check import check
from fake_engine import FakeDisk, FakeEngine

from arker.server.app import build_app
from arker.server.auth import create_key
from arker.server.config import Settings

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


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'arker.db'}"
        return
    if not PG_URL:
        pytest.skip("ARKER_TEST_POSTGRES_URL is not set")
    async with fresh_pg_database(PG_URL) as url:
        yield url


async def _check_hook(response: httpx.Response) -> None:
    await response.aread()
    check(response)


@dataclass
class Server:
    """One running app: its engine, service and an authenticated client per org."""

    app: Any
    engine: FakeEngine
    settings: Settings
    client: httpx.AsyncClient  # org "acme"
    other: httpx.AsyncClient  # org "globex"
    anon: httpx.AsyncClient  # no key
    keys: dict[str, str]

    @property
    def service(self) -> Any:
        return self.app.state.service


def client_for(app: Any, key: str | None, prefix: str = "") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://arker.test" + prefix,
        headers=headers,
        event_hooks={"response": [_check_hook]},
        timeout=30,
    )


StartServer = Callable[..., AbstractAsyncContextManager[Server]]


@pytest.fixture
def start_server(tmp_path: Path, database_url: str) -> StartServer:
    """Start (and on exit stop) an app; pass `disk=` to share a FakeDisk across
    restarts, `crash=True` to leave without a clean shutdown."""

    @asynccontextmanager
    async def start(
        disk: FakeDisk | None = None,
        crash: bool = False,
        supports_checkpoints: bool = True,
        keys: dict[str, str] | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Server]:
        settings = Settings(data_dir=str(tmp_path), database_url=database_url, **overrides)
        engine = FakeEngine(disk=disk, supports_checkpoints=supports_checkpoints)
        app = build_app(settings, engine)
        lifespan = app.app.router.lifespan_context(app.app)
        await lifespan.__aenter__()
        db = app.state.db
        if keys is None:
            keys = {org: (await create_key(db, org))[1] for org in ("acme", "globex")}
        prefix = settings.api_prefix
        server = Server(
            app,
            engine,
            settings,
            client_for(app, keys["acme"], prefix),
            client_for(app, keys["globex"], prefix),
            client_for(app, None, prefix),
            keys,
        )
        try:
            yield server
        finally:
            for c in (server.client, server.other, server.anon):
                await c.aclose()
            if crash:
                # As if the process died: tasks vanish, nothing is finished or
                # closed; the engine's runs die with it.
                runs = server.service.runs
                runs._stopping = True
                await runs.stop()
                engine.kill_all("the server was killed")
                await db.close()
            else:
                await lifespan.__aexit__(None, None, None)

    return start


@pytest.fixture
async def server(start_server: StartServer) -> AsyncIterator[Server]:
    async with start_server() as s:
        yield s
