"""Crash and restart: durable runs start again from their checkpoint (once),
others fail and their VM keeps working; nothing committed is lost; checkpoints
do not pile up."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from fake_engine import FakeDisk, FakeEngine
from harness import Server

from arker.engine.base import RunSpec
from arker.errors import ArkerError, ErrorCode

LOG = "/home/user/log"


async def _until(fn: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await fn():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def _status(s: Server, vm: str, run_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await s.client.get(f"/v1/vms/{vm}/runs/{run_id}")).json()
    return body


async def test_durable_run_restarts_from_its_checkpoint(start_server: Any) -> None:
    disk = FakeDisk()
    async with start_server(disk=disk, crash=True) as s:
        keys = s.keys
        vm = (await s.client.post("/v1/vms/busybox/fork", json={"durable": True})).json()["vm_id"]
        await s.client.post(f"/v1/vms/{vm}/runs", json={"command": "append /home/user/log before"})
        r = await s.client.post(
            f"/v1/vms/{vm}/runs",
            json={"command": "append /home/user/log done; sleep 0.3", "background": True},
        )
        run_id = r.json()["run_id"]

        async def half_done() -> bool:
            return disk.vms[vm].files.get(LOG, b"").endswith(b"done\n")

        await _until(half_done)
    # killed mid-run; the half-done write is on the disk
    assert disk.vms[vm].files[LOG] == b"before\ndone\n"
    async with start_server(disk=disk, keys=keys) as s:

        async def finished() -> bool:
            return (await _status(s, vm, run_id))["state"] == "completed"

        await _until(finished)
        status = await _status(s, vm, run_id)
        assert status["retry_count"] == 1
        assert disk.vms[vm].files[LOG] == b"before\ndone\n"  # one line, not two
        assert len(s.engine.checkpoints(vm)) <= 2


async def test_foreground_retry_after_crash_gets_the_result(start_server: Any) -> None:
    disk = FakeDisk()
    headers = {"Idempotency-Key": "fg-1"}
    # stdin too: the restart takes the run from its stored request
    stdin = base64.b64encode(b"in").decode()
    body = {"command": "append /home/user/log x; sleep 0.3; echo ok; stdin", "stdin": stdin}
    async with start_server(disk=disk, crash=True) as s:
        keys = s.keys
        vm = (await s.client.post("/v1/vms/busybox/fork", json={"durable": True})).json()["vm_id"]
        request = asyncio.create_task(
            s.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
        )

        async def half_done() -> bool:
            return LOG in disk.vms[vm].files

        await _until(half_done)
        request.cancel()  # the client's connection dies with the server
    async with start_server(disk=disk, keys=keys) as s:
        r = await s.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
        assert r.status_code == 200
        assert r.json()["stdout"] == base64.b64encode(b"ok\nin").decode()
        assert (await _status(s, vm, r.json()["run_id"]))["retry_count"] == 1
        assert disk.vms[vm].files[LOG] == b"x\n"


async def test_a_durable_run_the_engine_cannot_restart_fails(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FakeDisk()
    async with start_server(disk=disk, crash=True) as s:
        keys = s.keys
        vm = (await s.client.post("/v1/vms/busybox/fork", json={"durable": True})).json()["vm_id"]
        r = await s.client.post(
            f"/v1/vms/{vm}/runs", json={"command": "sleep 30", "background": True}
        )
        run_id = r.json()["run_id"]

    def refuse(self: FakeEngine, vm_id: str, run_id: str, spec: RunSpec) -> None:
        raise ArkerError(ErrorCode.UNAVAILABLE, "no room")

    monkeypatch.setattr(FakeEngine, "start_run", refuse)
    async with start_server(disk=disk, keys=keys) as s:
        status = await _status(s, vm, run_id)
        assert status["state"] == "failed" and status["retry_count"] == 1
        reason = status["failure_reason"]
        assert "could not start it again" in reason and "no room" in reason


async def test_foreground_retry_of_a_lost_run_answers_failed(start_server: Any) -> None:
    """A non-durable foreground run cut off by a crash is a result (`failed`,
    with its reason), not a server error: the client's retry learns what happened."""
    disk = FakeDisk()
    headers = {"Idempotency-Key": "fg-lost"}
    body = {"command": "append /home/user/log x; sleep 30"}
    async with start_server(disk=disk, crash=True) as s:
        keys = s.keys
        vm = (await s.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
        request = asyncio.create_task(
            s.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
        )

        async def half_done() -> bool:
            return LOG in disk.vms[vm].files

        await _until(half_done)
        request.cancel()
    async with start_server(disk=disk, keys=keys) as s:
        r = await s.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
        assert r.status_code == 200
        result = r.json()
        assert result["type"] == "failed" and "not durable" in result["failure_reason"]
        status = await _status(s, vm, result["run_id"])
        assert status["state"] == "failed" and status["retry_count"] == 0


async def test_non_durable_run_fails_and_vm_keeps_working(start_server: Any) -> None:
    disk = FakeDisk()
    async with start_server(disk=disk, crash=True) as s:
        keys = s.keys
        vm = (await s.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
        r = await s.client.post(
            f"/v1/vms/{vm}/runs", json={"command": "sleep 30", "background": True}
        )
        run_id = r.json()["run_id"]
        done = await s.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo kept"})
    async with start_server(disk=disk, keys=keys) as s:
        status = await _status(s, vm, run_id)
        assert status["state"] == "failed" and "not durable" in status["failure_reason"]
        assert status["finished_at"] is not None
        # what finished before the crash is all there
        kept = await _status(s, vm, done.json()["run_id"])
        assert (
            kept["state"] == "completed" and kept["stdout"] == base64.b64encode(b"kept\n").decode()
        )
        r = await s.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo again"})
        assert r.status_code == 200 and r.json()["type"] == "completed"


async def test_checkpoints_do_not_pile_up(start_server: Any) -> None:
    async with start_server() as s:
        vm = (await s.client.post("/v1/vms/busybox/fork", json={"durable": True})).json()["vm_id"]
        most = 0
        for i in range(300):
            r = await s.client.post(f"/v1/vms/{vm}/runs", json={"command": f"echo {i}"})
            assert r.status_code == 200
            most = max(most, len(s.engine.checkpoints(vm)))
        # concurrent runs share the checkpoint of the earliest one in flight
        await asyncio.gather(
            *(
                s.client.post(f"/v1/vms/{vm}/runs", json={"command": "sleep 0.05"})
                for _ in range(10)
            )
        )
        most = max(most, len(s.engine.checkpoints(vm)))
        assert 1 <= most <= 2


async def test_non_durable_vm_takes_no_checkpoints(server: Server) -> None:
    vm = (await server.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
    await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo"})
    assert server.engine.checkpoints(vm) == []


async def test_clean_shutdown_closes_the_engine(start_server: Any) -> None:
    async with start_server() as s:
        engine = s.engine
        vm = (await s.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
        await s.client.post(f"/v1/vms/{vm}/runs", json={"command": "sleep 30", "background": True})
    assert engine.closed
