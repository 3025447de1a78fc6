"""What a run leaves in the database is bounded: a VM's runs and uploads go
with the VM when it is deleted."""

from __future__ import annotations

import base64
from typing import Any

from harness import Server
from sqlalchemy import func, select

from arker.server.store import Run, Upload


async def _count(server: Server, model: type, vm_id: str) -> int:
    async with server.service.db.session() as s:
        return int(
            (
                await s.execute(select(func.count()).select_from(model).where(model.vm_id == vm_id))
            ).scalar_one()
        )


async def test_delete_vm_deletes_its_runs_and_uploads(server: Server) -> None:
    vm = (await server.client.post("/v1/vms/busybox/fork", json={})).json()["vm_id"]
    for _ in range(3):
        r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo hi"})
        assert r.status_code == 200
    r = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "sleep 30", "background": True}
    )
    run_id = r.json()["run_id"]
    r = await server.client.post(
        f"/v1/vms/{vm}/runs",
        json={"command": "echo again"},
        headers={"Idempotency-Key": "k1"},
    )
    assert r.status_code == 200
    assert await _count(server, Run, vm) == 5
    assert (await server.client.delete(f"/v1/vms/{vm}")).status_code == 204
    assert await _count(server, Run, vm) == 0
    assert await _count(server, Upload, vm) == 0
    assert (await server.client.get(f"/v1/vms/{vm}/runs/{run_id}")).status_code == 404
    # a retry under the same key answers not_found: the VM is gone
    r = await server.client.post(
        f"/v1/vms/{vm}/runs",
        json={"command": "echo again"},
        headers={"Idempotency-Key": "k1"},
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_stored_output_keeps_head_and_tail(start_server: Any) -> None:
    async with start_server(stored_output_bytes=100) as server:
        vm = (await server.client.post("/v1/vms/busybox/fork", json={})).json()["vm_id"]
        cmd = "echo HEAD; big 1000; echo TAIL; err small"
        r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": cmd})
        body = r.json()
        # the foreground answer carries it all
        out = base64.b64decode(body["stdout"])
        assert len(out) == 1010 and body["stdout_truncated"] is False
        status = (await server.client.get(f"/v1/vms/{vm}/runs/{body['run_id']}")).json()
        kept = base64.b64decode(status["stdout"])
        assert len(kept) == 100 and status["stdout_truncated"] is True
        assert kept.startswith(b"HEAD\n") and kept.endswith(b"TAIL\n")
        assert base64.b64decode(status["stderr"]) == b"small\n"
        assert status["stderr_truncated"] is False
        # small output is kept whole
        r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo hi"})
        status = (await server.client.get(f"/v1/vms/{vm}/runs/{r.json()['run_id']}")).json()
        assert base64.b64decode(status["stdout"]) == b"hi\n"
        assert status["stdout_truncated"] is False


def _db_bytes(server: Server) -> int:
    import os

    path = server.settings.db_url.split(":///", 1)[1]
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


async def test_200_chatty_runs_keep_the_database_bounded_and_it_shrinks(
    start_server: Any,
) -> None:
    """200 runs printing 1 MB each would store 200 MB; the database keeps 64 KiB
    of each, and gives the space back after the VM's delete and after retention."""
    import time

    keep = 64 * 1024
    async with start_server(stored_output_bytes=keep, run_retention_s=3600.0) as server:
        sqlite = server.service.db.is_sqlite
        vms = [
            (await server.client.post("/v1/vms/busybox/fork", json={})).json()["vm_id"]
            for _ in range(2)
        ]
        before = _db_bytes(server) if sqlite else 0
        for i in range(200):
            r = await server.client.post(
                f"/v1/vms/{vms[i % 2]}/runs", json={"command": "big 1000000"}
            )
            assert r.status_code == 200
            assert len(base64.b64decode(r.json()["stdout"])) == 1_000_000  # the answer is whole
        if sqlite:
            grown = _db_bytes(server) - before
            assert grown < 200 * keep * 1.5, grown  # not 200 MB
        assert (await server.client.delete(f"/v1/vms/{vms[0]}")).status_code == 204
        if sqlite:
            after_delete = _db_bytes(server)
            assert after_delete < before + grown * 0.7, (before, grown, after_delete)
        assert await _count(server, Run, vms[1]) == 100
        # Not yet past the retention: nothing goes.
        assert await server.service.retention.sweep() == 0
        assert await server.service.retention.sweep(now=time.time() + 3601) == 100
        assert await _count(server, Run, vms[1]) == 0
        if sqlite:
            assert _db_bytes(server) < after_delete - grown * 0.3
        r = await server.client.get(f"/v1/vms/{vms[1]}/runs/01KQH2ADR3DCAJF06N4R453WPJ")
        assert r.status_code == 404


def test_durations() -> None:
    import pytest

    from arker.server.retention import parse_duration

    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("12h") == 43200 and parse_duration("30m") == 1800
    assert parse_duration("45") == 45 and parse_duration("0") == 0
    with pytest.raises(ValueError):
        parse_duration("a week")
