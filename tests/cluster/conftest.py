"""Real services for the cluster tests: Debian's PostgreSQL 15 as a cluster of
its own, and SeaweedFS as the S3 store, each started once per session on this
branch's ports (18400-18499) with data in /tmp/cblobs-*, stopped by pid and
removed after. Other cluster tests start their own on other ports."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.cluster.blobs import BlobStore
from arker.cluster.local import Postgres, Seaweed, start_postgres, start_seaweed

POSTGRES_PORT = 18400
SEAWEED_PORT_BASE = 18410  # uses 18410-18419


def _tmpdir(name: str) -> Path:
    # Not under pytest's basetemp: its 0700 directories keep the postgres user out.
    return Path(tempfile.mkdtemp(prefix=f"cblobs-{name}-", dir="/tmp"))


@pytest.fixture(scope="session")
def cluster_postgres() -> Iterator[Postgres]:
    """A running PostgreSQL of our own; `.url` is a postgresql+asyncpg URL."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("starts PostgreSQL as the postgres user: needs root")
    where = _tmpdir("pg")
    pg = start_postgres(where, POSTGRES_PORT)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_seaweed() -> Iterator[Seaweed]:
    """A running SeaweedFS with S3 on `.endpoint_url` and its own credentials."""
    where = _tmpdir("weed")
    weed = start_seaweed(where, SEAWEED_PORT_BASE)
    try:
        yield weed
    finally:
        weed.stop()
        shutil.rmtree(where, ignore_errors=True)


_stores = 0


@pytest.fixture
def blob_store(cluster_seaweed: Seaweed) -> BlobStore:
    """A store under a prefix of its own in the session's SeaweedFS."""
    global _stores
    _stores += 1
    url = cluster_seaweed.blob_url("arker-test", f"t{os.getpid()}-{_stores}")
    return BlobStore.from_url(
        url,
        endpoint_url=cluster_seaweed.endpoint_url,
        access_key=cluster_seaweed.access_key,
        secret_key=cluster_seaweed.secret_key,
    )
