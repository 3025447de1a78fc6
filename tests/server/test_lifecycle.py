"""VMs that clean up after themselves, at the API and in the sweep: TTLs
(fork, PATCH, server default, a restart), idle stops (holds, runs in flight,
another server's activity), labels and the list's filters, and bad input.

Sweeps run for real on a short interval where a test waits for one (polling
with a generous deadline); elsewhere a test calls `sweep(now=...)` with a time
in the future, so nothing depends on how fast this machine is."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import pytest
from fake_engine import FakeDisk
from harness import Server
from sqlalchemy import select, update

from arker.engine.base import VmPower
from arker.server.store import Run, Vm

StartServer = Callable[..., AbstractAsyncContextManager[Server]]
DEADLINE_S = 30.0
FAST = {"lifecycle_interval_s": 0.05}
SLOW = {"lifecycle_interval_s": 3600.0}  # one sweep at start, then only the test's


async def _fork(server: Server, source: str = "busybox", **body: Any) -> dict[str, Any]:
    r = await server.client.post(f"/v1/vms/{source}/fork", json=body)
    assert r.status_code == 201, r.text
    vm: dict[str, Any] = r.json()
    return vm


def _at(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


async def _until(what: str, check: Callable[[], Any]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def slow(start_server: StartServer) -> AsyncIterator[Server]:
    async with start_server(**SLOW) as s:
        yield s


# -- the fields


async def test_fork_reports_ttl_idle_stop_and_labels(slow: Server) -> None:
    plain = await _fork(slow)
    assert plain["expires_at"] is None and plain["idle_stop_s"] is None
    assert plain["labels"] == {}
    before = time.time()
    vm = await _fork(
        slow, ttl_s=3600, idle_stop_s=600, labels={"team": "ml", "example.com/run": "r-1"}
    )
    expires = _at(vm["expires_at"])
    assert expires is not None and before + 3600 - 1 <= expires <= time.time() + 3600 + 1
    assert vm["idle_stop_s"] == 600
    assert vm["labels"] == {"team": "ml", "example.com/run": "r-1"}
    got = (await slow.client.get(f"/v1/vms/{vm['vm_id']}")).json()
    assert got == vm
    # A fork of a VM inherits none of them unless it sends them.
    child = await _fork(slow, vm["vm_id"])
    assert child["labels"] == {} and child["expires_at"] is None and child["idle_stop_s"] is None
    child = await _fork(slow, vm["vm_id"], labels={"team": "ml"})
    assert child["labels"] == {"team": "ml"}


async def test_server_defaults_and_null_for_none(start_server: StartServer) -> None:
    async with start_server(default_ttl_s=7200, default_idle_stop_s=300, **SLOW) as s:
        before = time.time()
        vm = await _fork(s)
        expires = _at(vm["expires_at"])
        assert expires is not None and before + 7200 - 1 <= expires <= time.time() + 7200 + 1
        assert vm["idle_stop_s"] == 300
        own = await _fork(s, ttl_s=60, idle_stop_s=30)
        assert own["idle_stop_s"] == 30
        own_at = _at(own["expires_at"])
        assert own_at is not None and own_at < time.time() + 61
        never = await _fork(s, ttl_s=None, idle_stop_s=None)
        assert never["expires_at"] is None and never["idle_stop_s"] is None


async def test_fork_replay_counts_the_new_fields(slow: Server) -> None:
    headers = {"Idempotency-Key": "fork-ttl-1"}
    body = {"ttl_s": 600, "labels": {"a": "b"}}
    first = await slow.client.post("/v1/vms/busybox/fork", json=body, headers=headers)
    again = await slow.client.post("/v1/vms/busybox/fork", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    other = await slow.client.post(
        "/v1/vms/busybox/fork", json={**body, "ttl_s": 601}, headers=headers
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"


# -- TTL


async def test_ttl_deletes_the_vm_within_seconds(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arker.server")
    async with start_server(**FAST) as s:
        vm = await _fork(s, ttl_s=1)
        vm_id = vm["vm_id"]
        r = await s.client.post(f"/v1/vms/{vm_id}/runs", json={"command": "echo hi"})
        assert r.status_code == 200
        keep = await _fork(s, ttl_s=3600)
        r = await s.client.post(f"/v1/vms/{keep['vm_id']}/runs", json={"command": "echo kept"})
        assert r.status_code == 200

        async def gone() -> bool:
            return (await s.client.get(f"/v1/vms/{vm_id}")).status_code == 404

        await _until("the vm expires", gone)
        assert vm_id not in s.engine.disk.vms  # its storage is freed
        assert s.service.metrics.vms_expired.value() == 1
        assert "arker_vms_expired_total 1" in s.service.metrics.render(None)
        assert any(vm_id in r.getMessage() and "ttl" in r.getMessage() for r in caplog.records)
        listed = (await s.client.get("/v1/vms")).json()
        assert [v["vm_id"] for v in listed["items"]] == [keep["vm_id"]]
        assert (await s.client.get(f"/v1/vms/{keep['vm_id']}")).status_code == 200
        async with s.service.db.session() as session:  # the expired VM's runs went with it
            rows = (await session.execute(select(Run.vm_id))).scalars().all()
        assert rows == [keep["vm_id"]]


async def test_patch_moves_and_removes_the_ttl(slow: Server) -> None:
    vm = await _fork(slow, ttl_s=5)
    vm_id = vm["vm_id"]
    before = time.time()
    r = await slow.client.patch(f"/v1/vms/{vm_id}", json={"ttl_s": 7200})
    assert r.status_code == 200, r.text
    moved = _at(r.json()["expires_at"])
    assert moved is not None and before + 7200 - 1 <= moved <= time.time() + 7200 + 1
    assert r.json()["vm_id"] == vm_id and r.json()["labels"] == {}
    assert (await slow.service.lifecycle.sweep(now=time.time() + 60)) == (0, 0)
    r = await slow.client.patch(f"/v1/vms/{vm_id}", json={"ttl_s": None})
    assert r.status_code == 200 and r.json()["expires_at"] is None
    assert (await slow.service.lifecycle.sweep(now=time.time() + 10**9)) == (0, 0)
    r = await slow.client.patch(f"/v1/vms/{vm_id}", json={"idle_stop_s": 120})
    assert r.json()["idle_stop_s"] == 120 and r.json()["expires_at"] is None  # kept
    r = await slow.client.patch(f"/v1/vms/{vm_id}", json={})
    assert r.status_code == 200 and r.json()["idle_stop_s"] == 120
    assert (await slow.client.get(f"/v1/vms/{vm_id}")).json() == r.json()


async def test_sweep_deletes_only_what_is_still_expired(slow: Server) -> None:
    soon = await _fork(slow, ttl_s=100)
    later = await _fork(slow, ttl_s=10_000)
    # A PATCH between the sweep's look and its claim wins: the claim is conditional.
    r = await slow.client.patch(f"/v1/vms/{soon['vm_id']}", json={"ttl_s": 50_000})
    assert r.status_code == 200
    assert await slow.service.lifecycle._claim_expired(soon["vm_id"], time.time() + 200) is False
    expired, _ = await slow.service.lifecycle.sweep(now=time.time() + 20_000)
    assert expired == 1
    assert (await slow.client.get(f"/v1/vms/{later['vm_id']}")).status_code == 404
    assert (await slow.client.get(f"/v1/vms/{soon['vm_id']}")).status_code == 200
    # Past its TTL, a VM is gone to PATCH even before a sweep deletes it.
    past = await _fork(slow, ttl_s=1)
    async with slow.service.db.session() as ses:
        await ses.execute(
            update(Vm).where(Vm.id == past["vm_id"]).values(expires_at=time.time() - 1)
        )
        await ses.commit()
    r = await slow.client.patch(f"/v1/vms/{past['vm_id']}", json={"ttl_s": 3600})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_ttl_survives_a_restart_and_a_half_done_delete_is_mended(
    start_server: StartServer,
) -> None:
    disk = FakeDisk()
    async with start_server(disk=disk, **SLOW) as s:
        vm = await _fork(s, ttl_s=3600, idle_stop_s=60, labels={"k": "v"})
        dead = await _fork(s)
        # As if a sweep had claimed it and the server died before the engine's delete.
        async with s.service.db.session() as ses:
            await ses.execute(
                update(Vm).where(Vm.id == dead["vm_id"]).values(deleted_at=time.time())
            )
            await ses.commit()
    assert dead["vm_id"] in disk.vms
    async with start_server(disk=disk, **SLOW) as s:
        got = (await s.client.get(f"/v1/vms/{vm['vm_id']}")).json()
        assert got["expires_at"] == vm["expires_at"] and got["idle_stop_s"] == 60
        assert got["labels"] == {"k": "v"}
        assert dead["vm_id"] not in disk.vms  # freed at start
        # Running as the server starts (an engine may keep VMs through its
        # restart), never used through it: not idle at once...
        disk.vms[vm["vm_id"]].power = VmPower.RUNNING
        await s.service.lifecycle.watch_running()
        assert (await s.service.lifecycle.sweep(now=time.time() + 1)) == (0, 0)
        # ...only once its idle time has passed since.
        assert (await s.service.lifecycle.sweep(now=time.time() + 120)) == (0, 1)


# -- idle stop


async def test_idle_stop_stops_and_the_next_run_starts_it(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arker.server")
    async with start_server(**FAST) as s:
        vm = await _fork(s, idle_stop_s=1)
        vm_id = vm["vm_id"]
        r = await s.client.post(
            f"/v1/vms/{vm_id}/runs", json={"command": "append /home/user/a.txt kept"}
        )
        assert r.status_code == 200, r.text
        assert (await s.client.get(f"/v1/vms/{vm_id}")).json()["state"] == "running"

        async def stopped() -> bool:
            return s.engine.disk.vms[vm_id].power is VmPower.STOPPED

        await _until("the idle vm stops", stopped)
        assert s.service.metrics.vms_idle_stopped.value() == 1
        assert any(vm_id in r.getMessage() and "stopped" in r.getMessage() for r in caplog.records)
        r = await s.client.get(f"/v1/vms/{vm_id}/files", params={"path": "/home/user/a.txt"})
        assert r.status_code == 200 and r.content == b"kept\n"  # its files stay
        r = await s.client.post(f"/v1/vms/{vm_id}/runs", json={"command": "cat /home/user/a.txt"})
        assert r.status_code == 200 and r.json()["type"] == "completed"
        assert s.engine.disk.vms[vm_id].power is VmPower.RUNNING  # started again


async def test_a_hold_and_a_run_in_flight_keep_it_busy(slow: Server) -> None:
    svc = slow.service
    vm = await _fork(slow, idle_stop_s=10)
    vm_id = vm["vm_id"]
    r = await slow.client.post(
        f"/v1/vms/{vm_id}/runs", json={"command": "sleep 30", "background": True}
    )
    run_id = r.json()["run_id"]
    assert (await svc.lifecycle.sweep(now=time.time() + 100)) == (0, 0)  # a run in flight
    r = await slow.client.post(f"/v1/vms/{vm_id}/runs/{run_id}/cancel")
    assert r.json()["state"] == "cancelled"
    async with svc.hold(vm_id):
        assert (await svc.lifecycle.sweep(now=time.time() + 200)) == (0, 0)
    # Released now: idle from now on, not from when the hold began.
    assert (await svc.lifecycle.sweep(now=time.time() + 5)) == (0, 0)
    assert (await svc.lifecycle.sweep(now=time.time() + 300)) == (0, 1)
    assert slow.engine.disk.vms[vm_id].power is VmPower.STOPPED
    # A stopped VM is left alone; one without an idle stop is never stopped.
    assert (await svc.lifecycle.sweep(now=time.time() + 400)) == (0, 0)
    other = await _fork(slow)
    await slow.client.post(f"/v1/vms/{other['vm_id']}/runs", json={"command": "echo"})
    assert (await svc.lifecycle.sweep(now=time.time() + 10**6)) == (0, 0)
    assert slow.engine.disk.vms[other["vm_id"]].power is VmPower.RUNNING


async def test_two_servers_on_one_database(start_server: StartServer) -> None:
    """Another server's hold counts (through active_at), and of two sweeps
    that both find a VM expired or idle, one acts."""
    disk = FakeDisk()
    async with start_server(disk=disk, **SLOW) as a, start_server(disk=disk, **SLOW) as b:
        vm = await _fork(a, idle_stop_s=10)
        vm_id = vm["vm_id"]
        await a.client.post(f"/v1/vms/{vm_id}/runs", json={"command": "echo"})
        f = time.time() + 100
        async with a.service.hold(vm_id):
            await a.service.lifecycle.sweep(now=f)  # writes the hold down
            assert (await b.service.lifecycle.sweep(now=f + 5)) == (0, 0)
        assert disk.vms[vm_id].power is VmPower.RUNNING
        both = await asyncio.gather(
            a.service.lifecycle.sweep(now=f + 20), b.service.lifecycle.sweep(now=f + 20)
        )
        assert sorted(stopped for _, stopped in both) == [0, 1]
        assert disk.vms[vm_id].power is VmPower.STOPPED

        ttl = await _fork(a, ttl_s=100)
        g = time.time() + 200
        both = await asyncio.gather(
            a.service.lifecycle.sweep(now=g), b.service.lifecycle.sweep(now=g)
        )
        assert sorted(expired for expired, _ in both) == [0, 1]
        assert ttl["vm_id"] not in disk.vms
        total = a.service.metrics.vms_expired.value() + b.service.metrics.vms_expired.value()
        assert total == 1


# -- labels and list filters


async def test_list_filters_and_total(slow: Server) -> None:
    ml = await _fork(slow, labels={"team": "ml", "tier": "gpu"})
    ml2 = await _fork(slow, labels={"team": "ml", "tier": "cpu"})
    web = await _fork(slow, labels={"team": "web", "example.com/x": "a=b"})
    child = await _fork(slow, ml["vm_id"])
    await slow.client.post(f"/v1/vms/{ml2['vm_id']}/runs", json={"command": "echo"})  # running
    # Another org's VM with the same labels is never listed.
    r = await slow.other.post("/v1/vms/busybox/fork", json={"labels": {"team": "ml"}})
    assert r.status_code == 201

    async def ids(**params: Any) -> tuple[list[str], int]:
        r = await slow.client.get("/v1/vms", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        return [v["vm_id"] for v in page["items"]], page["total"]

    assert await ids(label="team=ml") == ([ml2["vm_id"], ml["vm_id"]], 2)
    assert await ids(label=["team=ml", "tier=gpu"]) == ([ml["vm_id"]], 1)
    assert await ids(label=["team=ml", "tier=tpu"]) == ([], 0)
    assert await ids(label="example.com/x=a=b") == ([web["vm_id"]], 1)  # the first = splits
    assert await ids(label="team=ml", limit=1) == ([ml2["vm_id"]], 2)
    assert await ids(label="team=ml", limit=1, offset=1) == ([ml["vm_id"]], 2)
    assert await ids(parent_id=ml["vm_id"]) == ([child["vm_id"]], 1)
    assert await ids(parent_id="01NOPE") == ([], 0)
    assert await ids(state="running") == ([ml2["vm_id"]], 1)
    assert await ids(state="stopped", label="team=ml") == ([ml["vm_id"]], 1)
    assert await ids(state="stopped", limit=2) == ([child["vm_id"], web["vm_id"]], 3)
    assert await ids(state="lost") == ([], 0)
    assert (await ids())[1] == 4


@pytest.mark.parametrize(
    "params",
    [
        {"label": "team"},  # no =
        {"label": "=ml"},  # no key
        {"label": "bad key=v"},
        {"label": "-x=v"},
        {"label": "k=" + "v" * 257},
        {"label": ["k=v"] * 65},
        {"state": "paused"},
        {"parent_id": ""},
        {"parent_id": "01\x00"},
        {"label": "k=v\x00"},
    ],
)
async def test_bad_filters_are_422(slow: Server, params: dict[str, Any]) -> None:
    r = await slow.client.get("/v1/vms", params=params)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert next(iter(params)) in err["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ttl_s": -1}, "ttl_s"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": 10**10}, "ttl_s"),
        ({"ttl_s": "1h"}, "ttl_s"),
        ({"idle_stop_s": 0}, "idle_stop_s"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ({"labels": {"k" * 64: "v"}}, "labels"),
        ({"labels": {"Bad.Prefix/k": "v"}}, "labels"),
        ({"labels": {"k_": "v"}}, "labels"),
        ({"labels": {"": "v"}}, "labels"),
        ({"labels": {"k": "v" * 257}}, "labels"),
        ({"labels": {"k": 1}}, "labels"),
        ({"labels": {"k": "a\x00b"}}, "labels"),  # PostgreSQL's text holds no NUL
        ({"labels": ["k=v"]}, "labels"),
    ],
)
async def test_bad_fork_input_is_422(slow: Server, body: dict[str, Any], field: str) -> None:
    r = await slow.client.post("/v1/vms/busybox/fork", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and field in err["message"]


async def test_labels_at_their_bounds_are_fine(slow: Server) -> None:
    labels = {f"example.com/k{i}": "v" * 256 for i in range(63)}
    labels["a" + "b" * 61 + "c"] = ""
    vm = await _fork(slow, labels=labels)
    assert vm["labels"] == labels


async def test_patch_bad_input_and_other_orgs(slow: Server) -> None:
    vm = await _fork(slow)
    url = f"/v1/vms/{vm['vm_id']}"
    for body in ({"ttl_s": -5}, {"ttl_s": 0}, {"ttl_s": "soon"}, {"labels": {"a": "b"}}):
        r = await slow.client.patch(url, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
    r = await slow.other.patch(url, json={"ttl_s": 60})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await slow.client.patch("/v1/vms/01NOSUCHVM", json={"ttl_s": 60})
    assert r.status_code == 404
    assert (await slow.client.get(url)).json()["expires_at"] is None  # untouched
    r = await slow.anon.patch(url, json={"ttl_s": 60})
    assert r.status_code == 401
