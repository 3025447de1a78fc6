"""Real services for the cluster tests: Debian's PostgreSQL 15 as a cluster of
its own, and SeaweedFS as the S3 store, each started once per session on this
branch's ports (18400-18499) with data in /tmp/cblobs-*, stopped by pid and
removed after. Other cluster tests start their own on other ports."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.cluster.blobs import BlobStore
from arker.cluster.local import Postgres, Seaweed, start_postgres, start_seaweed
from arker.engine.base import RunInfo, RunSpec
from arker.engine.host import NamespaceEngine

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


# -- two engines on this machine, as two hosts of a cluster ------------------


def _engine(where: Path) -> Iterator[NamespaceEngine]:
    eng = NamespaceEngine(where, image_size_bytes=4 << 30, tmp_size_bytes=64 << 20,
                          networking=False)  # fmt: skip
    eng.open()
    try:
        eng.build_golden("busybox")
        yield eng
    finally:
        for vm_id in eng.vm_ids():
            eng.delete(vm_id)
        eng.close()


@pytest.fixture(scope="session")
def engine_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceEngine]:
    """The first host's engine (its own data dir and pool)."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("real btrfs pools and namespaces: needs root")
    yield from _engine(tmp_path_factory.mktemp("host-a"))


@pytest.fixture(scope="session")
def engine_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceEngine]:
    """The second host's engine."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("real btrfs pools and namespaces: needs root")
    yield from _engine(tmp_path_factory.mktemp("host-b"))


def new_id(prefix: str = "vm") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sh(engine: NamespaceEngine, vm_id: str, command: str) -> RunInfo:
    """A foreground run in the VM: start, wait, forget."""
    run_id = uuid.uuid4().hex[:12]
    engine.start_run(vm_id, run_id, RunSpec(command=command))
    info = engine.wait_run(vm_id, run_id, 120)
    engine.forget_run(vm_id, run_id)
    return info
