"""Runs: foreground results, background status, cancel, timeouts, output caps,
idempotency."""

from __future__ import annotations

import asyncio
import base64

from harness import Server


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _vm(server: Server, **body: object) -> str:
    r = await server.client.post("/v1/vms/busybox/fork", json=body)
    assert r.status_code == 201, r.text
    vm_id: str = r.json()["vm_id"]
    return vm_id


async def test_foreground_completed(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "echo hi; err oops; exit 3"}
    )
    assert r.status_code == 200
    res = r.json()
    assert res["type"] == "completed" and res["exit_code"] == 3 and res["oom_killed"] is False
    assert res["stdout"] == b64(b"hi\n") and res["stderr"] == b64(b"oops\n")
    status = (await server.client.get(f"/v1/vms/{vm}/runs/{res['run_id']}")).json()
    assert status["state"] == "completed" and status["exit_code"] == 3
    assert status["retry_count"] == 0 and status["background"] is False
    assert status["finished_at"] is not None and status["failure_reason"] is None
    vm_now = (await server.client.get(f"/v1/vms/{vm}")).json()
    assert vm_now["state"] == "running"


async def test_stdin_reaches_the_engine(server: Server) -> None:
    vm = await _vm(server)
    body = {"command": "stdin", "stdin": b64(b"piped\x00bytes")}
    r = await server.client.post(f"/v1/vms/{vm}/runs", json=body)
    assert r.json()["stdout"] == b64(b"piped\x00bytes")


async def test_timeout_and_output_cap(start_server: object) -> None:
    async with start_server(output_cap_bytes=10) as s:  # type: ignore[operator]
        vm = await _vm(s)
        r = await s.client.post(f"/v1/vms/{vm}/runs", json={"command": "big 25"})
        res = r.json()
        assert res["stdout"] == b64(b"x" * 10) and res["stdout_truncated"] is True
        r = await s.client.post(
            f"/v1/vms/{vm}/runs", json={"command": "echo a; sleep 30", "timeout_s": 0.2}
        )
        res = r.json()
        assert res["type"] == "timed_out" and res["timeout_s"] == 0.2
        assert res["stdout"] == b64(b"a\n")


async def test_background_status_and_cancel(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "echo started; sleep 30", "background": True}
    )
    assert r.status_code == 202
    started = r.json()
    assert started["type"] == "started"
    run_url = f"/v1/vms/{vm}/runs/{started['run_id']}"
    for _ in range(50):
        status = (await server.client.get(run_url)).json()
        if status["stdout"]:
            break
        await asyncio.sleep(0.02)
    assert status["state"] == "running" and status["stdout"] == b64(b"started\n")
    assert status["finished_at"] is None and status["exit_code"] is None
    cancelled = (await server.client.post(f"{run_url}/cancel")).json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
    again = await server.client.post(f"{run_url}/cancel")  # a finished run, as it is
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


async def test_background_run_finishes_and_is_persisted(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "sleep 0.05; echo done", "background": True}
    )
    run_url = f"/v1/vms/{vm}/runs/{r.json()['run_id']}"
    for _ in range(100):
        status = (await server.client.get(run_url)).json()
        if status["state"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert status["state"] == "completed" and status["stdout"] == b64(b"done\n")
    assert status["duration_ms"] is not None


async def test_unknown_run_and_bad_stdin(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.get(f"/v1/vms/{vm}/runs/nope")
    assert r.status_code == 404
    r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "x", "stdin": "!!"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": ""})
    assert r.status_code == 422
    r = await server.client.post("/v1/vms/nosuch/runs", json={"command": "x"})
    assert r.status_code == 404


async def test_run_idempotency(server: Server) -> None:
    vm = await _vm(server)
    headers = {"Idempotency-Key": "k-1"}
    body = {"command": "echo once"}
    first = await server.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
    second = await server.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
    assert first.json() == second.json()
    assert sum(c.startswith("start ") for c in server.engine.calls) == 1
    r = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "echo twice"}, headers=headers
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    # the same key on another org is another key
    vm2 = (await server.other.post("/v1/vms/busybox/fork")).json()["vm_id"]
    r = await server.other.post(f"/v1/vms/{vm2}/runs", json=body, headers=headers)
    assert r.status_code == 200


async def test_idempotent_retry_waits_for_a_foreground_run_in_progress(server: Server) -> None:
    vm = await _vm(server)
    headers = {"Idempotency-Key": "k-slow"}
    body = {"command": "sleep 0.3; echo slow"}
    first, second = await asyncio.gather(
        server.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers),
        server.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers),
    )
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() and first.json()["stdout"] == b64(b"slow\n")
    assert sum(c.startswith("start ") for c in server.engine.calls) == 1


async def test_a_foreground_run_outlives_its_client(server: Server) -> None:
    """The run's task, not the request, records it: a client that hangs up
    leaves it running and recorded, and its retry gets the one result."""
    vm = await _vm(server)
    headers = {"Idempotency-Key": "k-gone"}
    body = {"command": "sleep 0.2; echo late"}
    request = asyncio.create_task(
        server.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
    )
    while not any(c.startswith("start ") for c in server.engine.calls):
        await asyncio.sleep(0.01)
    request.cancel()
    r = await server.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
    assert r.status_code == 200 and r.json()["stdout"] == b64(b"late\n")
    status = (await server.client.get(f"/v1/vms/{vm}/runs/{r.json()['run_id']}")).json()
    assert status["state"] == "completed" and status["retry_count"] == 0
    assert sum(c.startswith("start ") for c in server.engine.calls) == 1


async def test_ended_runs_are_forgotten_after_their_answers(start_server: object) -> None:
    """The engine drops an ended run's spool in a batch, after the answer;
    a stop forgets what ended just before it."""
    forgotten: list[str] = []
    async with start_server() as s:  # type: ignore[operator]
        engine = s.engine
        forget = engine.forget_run

        def recording(vm_id: str, run_id: str) -> None:
            forgotten.append(run_id)
            forget(vm_id, run_id)

        engine.forget_run = recording
        vm = await _vm(s)
        ids = [
            (await s.client.post(f"/v1/vms/{vm}/runs", json={"command": f"echo {i}"})).json()[
                "run_id"
            ]
            for i in range(3)
        ]
        for _ in range(100):
            if len(forgotten) == len(ids):
                break
            await asyncio.sleep(0.02)
        assert sorted(forgotten) == sorted(ids) and not engine.disk.vms[vm].runs
        r = await s.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo last"})
        last = r.json()["run_id"]
    assert forgotten[-1] == last


async def test_background_idempotency_returns_same_run(server: Server) -> None:
    vm = await _vm(server)
    headers = {"Idempotency-Key": "k-bg"}
    body = {"command": "sleep 0.1", "background": True}
    a = await server.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
    b = await server.client.post(f"/v1/vms/{vm}/runs", json=body, headers=headers)
    assert a.status_code == b.status_code == 202 and a.json() == b.json()
    c = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "sleep 0.1"}, headers=headers
    )
    assert c.status_code == 409


async def test_bad_idempotency_key_is_422(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "x"}, headers={"Idempotency-Key": "has space"}
    )
    assert r.status_code == 422


async def test_fork_idempotency(server: Server) -> None:
    headers = {"Idempotency-Key": "fork-1"}
    a = await server.client.post("/v1/vms/busybox/fork", json={"name": "a"}, headers=headers)
    b = await server.client.post("/v1/vms/busybox/fork", json={"name": "a"}, headers=headers)
    assert a.status_code == b.status_code == 201 and a.json() == b.json()
    assert sum(c.startswith("fork ") for c in server.engine.calls) == 1
    c = await server.client.post("/v1/vms/busybox/fork", json={"name": "b"}, headers=headers)
    assert c.status_code == 409
    assert (await server.client.get("/v1/vms")).json()["total"] == 1


async def test_concurrent_forks_with_one_key_make_one_vm(server: Server) -> None:
    headers = {"Idempotency-Key": "fork-race"}
    results = await asyncio.gather(
        *(server.client.post("/v1/vms/busybox/fork", headers=headers) for _ in range(5))
    )
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["vm_id"] for r in results}) == 1
    assert len(server.engine.vm_ids()) == 1


async def test_a_run_the_engine_refuses_is_not_recorded(server: Server) -> None:
    vm = await _vm(server)
    headers = {"Idempotency-Key": "k-refused"}
    for background in (False, True, False):
        r = await server.client.post(
            f"/v1/vms/{vm}/runs",
            json={"command": "refuse", "background": background},
            headers=headers if not background else {},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    # the retry under the same key tried again rather than replaying a failure
    assert sum(c.startswith("start ") for c in server.engine.calls) == 3


async def test_delete_vm_with_a_run_in_flight(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.post(
        f"/v1/vms/{vm}/runs", json={"command": "sleep 30", "background": True}
    )
    run_id = r.json()["run_id"]
    assert (await server.client.delete(f"/v1/vms/{vm}")).status_code == 204
    assert (await server.client.get(f"/v1/vms/{vm}/runs/{run_id}")).status_code == 404
    assert vm not in server.engine.vm_ids()
