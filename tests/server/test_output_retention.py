"""What a run leaves in the database is bounded: a VM's runs and uploads go
with the VM when it is deleted."""

from __future__ import annotations

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
