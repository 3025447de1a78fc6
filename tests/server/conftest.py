"""Fixtures: the app over a FakeEngine on SQLite (and PostgreSQL when
ARKER_TEST_POSTGRES_URL is set), keys for two orgs, and an HTTP client whose
every response is checked against the contract."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # contract_check

from fake_engine import FakeDisk, FakeEngine
from harness import Server, client_for
from pg import PG_URL, fresh_pg_database

from arker.server.app import build_app
from arker.server.auth import create_key
from arker.server.config import Settings


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'arker.db'}"
        return
    if not PG_URL:
        pytest.skip("ARKER_TEST_POSTGRES_URL is not set")
    async with fresh_pg_database(PG_URL) as url:
        yield url


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
