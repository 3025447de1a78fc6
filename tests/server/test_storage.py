"""Disk quotas on fork (resources.disk_mib) and the pool's reserve (507)."""

from __future__ import annotations

from harness import Server

MiB = 2**20


async def test_fork_quota_default_asked_inherited_and_capped(server: Server) -> None:
    default = server.settings.vm_disk_mib
    vm = (await server.client.post("/v1/vms/busybox/fork")).json()
    assert vm["resources"]["disk_mib"] == default
    limits = server.engine.limits[vm["vm_id"]]
    assert limits is not None and limits.disk_bytes == default * MiB

    r = await server.client.post("/v1/vms/busybox/fork", json={"resources": {"disk_mib": 64}})
    assert r.status_code == 201 and r.json()["resources"]["disk_mib"] == 64
    small = r.json()["vm_id"]
    # A fork of a VM inherits its parent's quota unless it asks for another.
    child = (await server.client.post(f"/v1/vms/{small}/fork")).json()
    assert child["resources"]["disk_mib"] == 64
    got = (await server.client.get(f"/v1/vms/{child['vm_id']}")).json()
    assert got["resources"]["disk_mib"] == 64
    other = (
        await server.client.post(f"/v1/vms/{small}/fork", json={"resources": {"disk_mib": 128}})
    ).json()
    assert other["resources"]["disk_mib"] == 128

    too_big = server.settings.vm_disk_max_mib + 1
    r = await server.client.post("/v1/vms/busybox/fork", json={"resources": {"disk_mib": too_big}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and str(too_big) in err["message"]


async def test_fork_key_hash_includes_resources_only_when_set(server: Server) -> None:
    headers = {"Idempotency-Key": "fork-res"}
    a = await server.client.post("/v1/vms/busybox/fork", json={}, headers=headers)
    b = await server.client.post("/v1/vms/busybox/fork", json={"resources": None}, headers=headers)
    assert a.status_code == b.status_code == 201 and a.json() == b.json()
    c = await server.client.post(
        "/v1/vms/busybox/fork", json={"resources": {"disk_mib": 5}}, headers=headers
    )
    assert c.status_code == 409


async def test_pool_below_reserve_refuses_fork_and_run(server: Server) -> None:
    vm = (await server.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
    server.engine.storage_full = True
    forks = sum(c.startswith("fork ") for c in server.engine.calls)
    r = await server.client.post("/v1/vms/busybox/fork")
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
    assert sum(c.startswith("fork ") for c in server.engine.calls) == forks
    r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "true"})
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
    server.engine.storage_full = False
    r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "true"})
    assert r.status_code == 200
