"""The local services are real: PostgreSQL answers SQL over its URL, SeaweedFS
stores and returns objects, and both stop by their own pid."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from arker.cluster.local import Postgres, Seaweed


def test_postgres_answers_sql_on_its_url(cluster_postgres: Postgres) -> None:
    import asyncpg

    async def query() -> tuple[str, int]:
        conn = await asyncpg.connect(cluster_postgres.dsn)
        try:
            version = await conn.fetchval("SHOW server_version")
            await conn.execute("CREATE TABLE IF NOT EXISTS probe (n int)")
            await conn.execute("INSERT INTO probe VALUES (1)")
            count = await conn.fetchval("SELECT count(*) FROM probe")
            await conn.execute("DROP TABLE probe")
            return str(version), int(count)
        finally:
            await conn.close()

    version, count = asyncio.run(query())
    assert version.startswith("15")
    assert count == 1
    assert cluster_postgres.url.startswith("postgresql+asyncpg://arker:")
    os.kill(cluster_postgres.pid, 0)  # its own postmaster, alive


def test_postgres_refuses_a_wrong_password(cluster_postgres: Postgres) -> None:
    import asyncpg

    bad = cluster_postgres.dsn.replace(cluster_postgres.password, "wrong")
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(asyncpg.connect(bad))


def test_seaweed_is_an_s3_server_with_our_credentials(cluster_seaweed: Seaweed) -> None:
    from arker.cluster.blobs import BlobStore
    from arker.errors import ArkerError, ErrorCode

    url = cluster_seaweed.blob_url("arker-local", "probe")
    good = BlobStore.from_url(url, endpoint_url=cluster_seaweed.endpoint_url,
                              access_key=cluster_seaweed.access_key,
                              secret_key=cluster_seaweed.secret_key)  # fmt: skip
    good.put_bytes("k", b"v")
    assert good.get_bytes("k") == b"v"
    wrong = BlobStore.from_url(url, endpoint_url=cluster_seaweed.endpoint_url,
                               access_key=cluster_seaweed.access_key, secret_key="nope",
                               retries=0)  # fmt: skip
    with pytest.raises(ArkerError) as err:
        wrong.get_bytes("k")
    assert err.value.code == ErrorCode.UNAVAILABLE
    good.delete("k")
    cmdline = Path(f"/proc/{cluster_seaweed.pid}/cmdline").read_bytes().split(b"\0")
    for flag in ("-master.port.grpc=", "-volume.port.grpc=", "-filer.port.grpc=",
                 "-s3.port.grpc=", "-logdir=", "-volume.preStopSeconds=0",
                 "-master.electionTimeout=1s", "-master.telemetry=false",
                 "-s3.port.iceberg=0", "-s3.port.lance=0"):  # fmt: skip
        assert any(arg.decode().startswith(flag) for arg in cmdline), flag
