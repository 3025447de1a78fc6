"""What an import cut short by a server's death leaves: its operation ends
failed (unavailable, retry) at the next start, and its name is free again."""

from __future__ import annotations

import time
from typing import Any

from fake_engine import FakeDisk

from arker.server.store import Golden, Operation


async def test_a_restart_fails_the_cut_import_and_frees_its_name(start_server: Any) -> None:
    disk = FakeDisk()
    async with start_server(disk=disk, crash=True) as s:
        keys = s.keys
        now = time.time()
        async with s.service.db.session() as session:
            session.add(
                Golden(
                    org="acme",
                    name="cut",
                    engine_name="O-01M0000000000000000000000A",
                    created_at=now,
                    ready=False,
                )
            )
            session.add(
                Operation(
                    id="op_cut",
                    org="acme",
                    kind="import_golden",
                    state="running",
                    done=10,
                    total=100,
                    message="reading",
                    created_at=now,
                    updated_at=now,
                )
            )
            await session.commit()
        r = await s.client.put("/v1/goldens/cut", content=b"x")
        assert r.status_code == 409  # an import holds the name while it runs
        assert (await s.client.get("/v1/operations/op_cut")).json()["state"] == "running"
    async with start_server(disk=disk, keys=keys) as s:
        op = (await s.client.get("/v1/operations/op_cut")).json()
        assert op["state"] == "failed"
        assert op["error"]["code"] == "unavailable" and op["error"]["status"] == 503
        assert (await s.other.get("/v1/operations/op_cut")).status_code == 404
        assert "cut" not in [g["name"] for g in (await s.client.get("/v1/goldens")).json()["items"]]
        r = await s.client.put("/v1/goldens/cut", content=b"x")
        assert r.status_code == 202, r.text  # the name is free; the fake engine imports anything
