"""Memory and processes at the API: restart, run warnings, admission control
(the host's memory commitment and the orgs' quotas)."""

from __future__ import annotations

import asyncio
import json

from harness import Server
from sqlalchemy import update

from arker.engine.base import Limits
from arker.server.store import Run

GIB = 1024**3


async def _vm(server: Server, client: object = None) -> str:
    c = client or server.client
    r = await c.post("/v1/vms/busybox/fork")  # type: ignore[attr-defined]
    assert r.status_code == 201, r.text
    vm_id: str = r.json()["vm_id"]
    return vm_id


async def test_restart(server: Server) -> None:
    vm = await _vm(server)
    started = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "sleep 30", "background": True}
    )
    run_id = started.json()["run_id"]
    r = await server.client.post(f"/v1/vms/{vm}/restart")
    assert r.status_code == 200 and r.json()["vm_id"] == vm and r.json()["state"] == "running"
    status = (await server.client.get(f"/v1/vms/{vm}/runs/{run_id}")).json()
    assert status["state"] == "failed" and status["failure_reason"] == "the vm was restarted"
    assert f"restart {vm}" in server.engine.calls


async def test_restart_not_found_other_org_and_lost(server: Server) -> None:
    r = await server.client.post("/v1/vms/nope/restart")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    vm = await _vm(server)
    assert (await server.other.post(f"/v1/vms/{vm}/restart")).status_code == 404
    server.engine.disk.vms.pop(vm)
    await server.service._mark_lost()
    r = await server.client.post(f"/v1/vms/{vm}/restart")
    assert r.status_code == 410 and r.json()["error"]["code"] == "vm_lost"


async def test_warnings_are_stored_and_sent(server: Server) -> None:
    vm = await _vm(server)
    res = (await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo hi"})).json()
    assert res["warnings"] == []
    warning = {"code": "pids_exhausted", "message": "the vm holds 512 of its 512 processes"}
    async with server.service.db.session() as s:
        await s.execute(
            update(Run).where(Run.id == res["run_id"]).values(warnings=json.dumps([warning]))
        )
        await s.commit()
    status = (await server.client.get(f"/v1/vms/{vm}/runs/{res['run_id']}")).json()
    assert status["warnings"] == [warning]


async def test_engine_warnings_reach_the_result(server: Server) -> None:
    from arker.engine.base import RunInfo, RunPhase
    from arker.server.runs import _end_values

    info = RunInfo(
        RunPhase.COMPLETED, 0, b"", b"", False, False, False, 0.0, 1.0,
        warnings=(("pids_exhausted", "full"),),
    )  # fmt: skip
    assert json.loads(_end_values(info)["warnings"]) == [
        {"code": "pids_exhausted", "message": "full"}
    ]
    assert (
        _end_values(RunInfo(RunPhase.COMPLETED, 0, b"", b"", False, False, False, 0.0, 1.0))[
            "warnings"
        ]
        is None
    )


async def test_host_memory_commitment(start_server: object) -> None:
    # 3 GiB of host at overcommit 1: three VMs of 1 GiB, not four.
    per_vm = Limits().memory_bytes
    async with start_server(host_memory_bytes=3 * per_vm, overcommit=1.0) as s:  # type: ignore[operator]
        vms = [await _vm(s) for _ in range(2)]
        await _vm(s, s.other)  # every org counts against the host
        r = await s.client.post("/v1/vms/busybox/fork")
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
        details = r.json()["error"]["details"]
        assert details == {
            "limit": "host_memory_mib",
            "max": 3 * per_vm // 2**20,
            "current": 3 * per_vm // 2**20,
            "requested": per_vm // 2**20,
        }
        assert r.headers["retry-after"]
        # A stopped VM still counts (it starts on its next run); a deleted one does not.
        assert (await s.client.delete(f"/v1/vms/{vms[0]}")).status_code == 204
        await _vm(s)


async def test_admission_counts_what_was_there_before_a_restart(start_server: object) -> None:
    """The live VMs are read at start: those forked before a restart count,
    and one the engine lost meanwhile does not."""
    from fake_engine import FakeDisk

    disk = FakeDisk()
    async with start_server(disk=disk, org_max_vms=3) as s:  # type: ignore[operator]
        keys = s.keys
        kept, gone = await _vm(s), await _vm(s)
    disk.vms.pop(gone)
    async with start_server(disk=disk, keys=keys, org_max_vms=3) as s:  # type: ignore[operator]
        await _vm(s)
        await _vm(s)  # the lost VM's place
        r = await s.client.post("/v1/vms/busybox/fork")
        assert r.status_code == 429 and r.json()["error"]["details"]["current"] == 3
        assert (await s.client.get(f"/v1/vms/{kept}")).json()["state"] != "lost"


async def test_concurrent_forks_cannot_pass_a_quota_together(start_server: object) -> None:
    async with start_server(org_max_vms=3) as s:  # type: ignore[operator]
        answers = await asyncio.gather(*(s.client.post("/v1/vms/busybox/fork") for _ in range(8)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [201] * 3 + [429] * 5, codes
        assert (await s.client.get("/v1/vms")).json()["total"] == 3
        assert (await s.other.post("/v1/vms/busybox/fork")).status_code == 201


async def test_org_memory_quota(start_server: object) -> None:
    mib = Limits().memory_bytes // 2**20
    async with start_server(org_max_memory_mib=2 * mib) as s:  # type: ignore[operator]
        await _vm(s)
        await _vm(s)
        r = await s.client.post("/v1/vms/busybox/fork")
        assert r.status_code == 429
        assert r.json()["error"]["details"] == {
            "limit": "org_max_memory_mib",
            "max": 2 * mib,
            "current": 2 * mib,
            "requested": mib,
        }


async def test_idempotent_fork_replay_is_not_refused(start_server: object) -> None:
    async with start_server(org_max_vms=1) as s:  # type: ignore[operator]
        headers = {"Idempotency-Key": "fork-once"}
        first = await s.client.post("/v1/vms/busybox/fork", headers=headers)
        again = await s.client.post("/v1/vms/busybox/fork", headers=headers)
        assert first.status_code == 201 and again.status_code == 201
        assert again.json()["vm_id"] == first.json()["vm_id"]
