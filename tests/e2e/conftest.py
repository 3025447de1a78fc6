"""End-to-end fixtures: a real `arker serve` on the real namespace engine, with
the busybox golden built first, keys made by `arker keys create`, on SQLite and
(with ARKER_TEST_POSTGRES_URL) PostgreSQL."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))  # pg
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # contract_check
sys.path.insert(0, str(Path(__file__).resolve().parent))  # live

from live import Live, make_live, stop_live
from pg import PG_URL, create_database_sync, drop_database_sync

from arker import Arker, AsyncArker

HERE = Path(__file__).resolve().parent


def _why_not_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("mkfs.btrfs") is None:
        return "needs btrfs-progs"
    if not Path("/bin/busybox").exists():
        return "needs busybox-static"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _why_not_usable()
    kept, dropped = [], []
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.root)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
            # Against the cluster alone, a test with no server kind (it starts a
            # single server of its own) would only run a second time.
            if _CLUSTER == "only" and "db_choice" not in getattr(item, "fixturenames", ()):
                dropped.append(item)
                continue
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# ARKER_E2E_CLUSTER=1 adds a third server kind, a cluster (tests/cluster/:
# PostgreSQL, two host agents, an API replica); =only runs the cluster alone
# (scripts/test runs the e2e suite so in CI, after the single-server kinds).
_CLUSTER = os.environ.get("ARKER_E2E_CLUSTER", "")
SERVER_KINDS = ["cluster"] if _CLUSTER == "only" else ["sqlite", "postgres"]
if _CLUSTER == "1":
    SERVER_KINDS.append("cluster")


@pytest.fixture(scope="session", params=SERVER_KINDS)
def db_choice(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite in the data dir, else a fresh PostgreSQL database (or
    "cluster": see `live`)."""
    if request.param == "sqlite":
        yield None
        return
    if request.param == "cluster":
        if not PG_URL:
            pytest.skip("ARKER_TEST_POSTGRES_URL is not set")
        yield "cluster"
        return
    if not PG_URL:
        pytest.skip("ARKER_TEST_POSTGRES_URL is not set")
    url, name = create_database_sync(PG_URL)
    try:
        yield url
    finally:
        drop_database_sync(PG_URL, name)


@pytest.fixture
def single_db(db_choice: str | None) -> str | None:
    """`db_choice` for a test that starts (and kills) a single server of its
    own. Under the cluster kind such a test has nothing to run: a cluster's
    own kills (hosts, replicas) are tests/cluster/test_takeover.py and
    test_router.py."""
    if db_choice == "cluster":
        pytest.skip("starts a single server of its own; the cluster's kills are in tests/cluster/")
    return db_choice


@pytest.fixture(scope="session")
def live(db_choice: str | None) -> Iterator[Live]:
    """One server per database for the whole session (starting one builds a golden)."""
    if db_choice == "cluster":
        sys.path.insert(0, str(HERE.parent / "cluster"))
        from clusterkit import cluster_live

        with cluster_live() as live_cluster:
            yield live_cluster
        return
    server = make_live(db_choice)
    try:
        yield server
    finally:
        stop_live(server)


@pytest.fixture
def arker(live: Live) -> Iterator[Arker]:
    with live.client() as client:
        yield client


@pytest.fixture
async def aarker(live: Live) -> AsyncIterator[AsyncArker]:
    async with live.aclient() as client:
        yield client


@pytest.fixture(autouse=True)
def no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which the shared server logged an error (a 500 is a
    bug, even when the test did not look at that response)."""
    if "live" not in request.fixturenames:
        yield
        return
    live_server: Live = request.getfixturevalue("live")
    before = len(live_server.server.log())
    yield
    new = live_server.server.log()[before:]
    errors = [line for line in new.splitlines() if '"level": "error"' in line]
    assert not errors, "\n".join(errors)[-4000:]
