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
