"""A VM's size on fork (resources.cpu, memory_mib, pids): asked, inherited,
capped by the server's maxima, recorded, reported, and counted by admission.
The engine side (what a VM sees of its size) is tests/engine/test_sizes.py."""

from __future__ import annotations

from typing import Any

from harness import Server

from arker.engine.base import Limits

MiB = 2**20
DEFAULTS = Limits()


async def test_a_fork_gets_what_it_asks_and_a_child_inherits_it(server: Server) -> None:
    plain = (await server.client.post("/v1/vms/busybox/fork")).json()
    res = plain["resources"]
    assert (res["cpu"], res["memory_mib"], res["pids"]) == (
        DEFAULTS.cpu_cores, DEFAULTS.memory_bytes // MiB, DEFAULTS.pids_max,
    )  # fmt: skip

    asked = {"cpu": 0.5, "memory_mib": 512, "pids": 100}
    r = await server.client.post("/v1/vms/busybox/fork", json={"resources": asked})
    assert r.status_code == 201, r.text
    sized = r.json()
    assert {k: sized["resources"][k] for k in asked} == asked
    limits = server.engine.limits[sized["vm_id"]]
    assert limits is not None
    assert (limits.cpu_cores, limits.memory_bytes, limits.pids_max) == (0.5, 512 * MiB, 100)

    # A child inherits every field it does not ask for, and reads it back.
    r = await server.client.post(
        f"/v1/vms/{sized['vm_id']}/fork", json={"resources": {"memory_mib": 256}}
    )
    assert r.status_code == 201, r.text
    child = (await server.client.get(f"/v1/vms/{r.json()['vm_id']}")).json()
    assert {k: child["resources"][k] for k in asked} == {**asked, "memory_mib": 256}
    limits = server.engine.limits[child["vm_id"]]
    assert limits is not None and (limits.cpu_cores, limits.memory_bytes) == (0.5, 256 * MiB)
    # The disk quota is inherited beside them, as before.
    assert child["resources"]["disk_mib"] == sized["resources"]["disk_mib"]


async def test_above_the_servers_maximum_is_400_naming_field_and_max(
    start_server: Any,
) -> None:
    async with start_server(vm_max_cpu=2.0, vm_max_memory_mib=1024, vm_max_pids=300) as s:
        before = (await s.client.get("/v1/vms")).json()["total"]
        for field, value, top in (("cpu", 2.5, "2"), ("memory_mib", 1025, "1024"),
                                  ("pids", 301, "300")):  # fmt: skip
            r = await s.client.post("/v1/vms/busybox/fork", json={"resources": {field: value}})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "invalid_request"
            assert f"resources.{field}" in err["message"] and top in err["message"]
        # At the maximum is fine; nothing was made by the refusals.
        ok = {"cpu": 2, "memory_mib": 1024, "pids": 300}
        r = await s.client.post("/v1/vms/busybox/fork", json={"resources": ok})
        assert r.status_code == 201, r.text
        assert (await s.client.get("/v1/vms")).json()["total"] == before + 1


async def test_below_the_contracts_minimum_is_refused(server: Server) -> None:
    for field, value in (("cpu", 0.1), ("memory_mib", 64), ("pids", 2)):
        r = await server.client.post("/v1/vms/busybox/fork", json={"resources": {field: value}})
        assert r.status_code in (400, 422), r.text
        assert r.json()["error"]["code"] == "invalid_request"


async def test_admission_counts_each_vms_own_memory(start_server: Any) -> None:
    # Room for 3 GiB of limits: one 2 GiB VM and one 1 GiB VM fit, a third does not.
    async with start_server(host_memory_bytes=3 * 1024 * MiB, overcommit=1.0) as s:
        big = {"resources": {"memory_mib": 2048}}
        assert (await s.client.post("/v1/vms/busybox/fork", json=big)).status_code == 201
        assert (await s.client.post("/v1/vms/busybox/fork")).status_code == 201
        r = await s.client.post("/v1/vms/busybox/fork", json={"resources": {"memory_mib": 128}})
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"


async def test_the_key_hash_covers_sizes_only_when_set(server: Server) -> None:
    headers = {"Idempotency-Key": "fork-size"}
    a = await server.client.post("/v1/vms/busybox/fork", json={}, headers=headers)
    assert a.status_code == 201
    r = await server.client.post(
        "/v1/vms/busybox/fork", json={"resources": {"cpu": 1}}, headers=headers
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
