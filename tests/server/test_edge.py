"""The API edge: another org's VM or run answers exactly as one that never
existed (same queries, same status, same body), and /metrics needs an admin key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from harness import Server
from sqlalchemy import event
from ulid import ULID

F = "/home/user/notes.txt"


@contextmanager
def _statements(server: Server) -> Iterator[list[str]]:
    """Every SQL statement the app sends while the block runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = server.app.state.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def _send(
    server: Server, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, list[str]]:
    with _statements(server) as seen:
        r = await server.other.request(method, path, **kwargs)
    return r, seen


def _same_answer(a: httpx.Response, b: httpx.Response, a_ids: list[str], b_ids: list[str]) -> None:
    assert a.status_code == b.status_code == 404
    body_a, body_b = a.text, b.text
    for x, y in zip(a_ids, b_ids, strict=True):
        body_a = body_a.replace(x, "ID")
        body_b = body_b.replace(y, "ID")
    assert body_a == body_b


async def test_another_orgs_vm_answers_as_a_missing_one(server: Server) -> None:
    # acme's VM and run, just used by acme, so any cache holds them.
    vm = (await server.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
    run = (await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo"})).json()
    run_id = run["run_id"]
    await server.client.put(f"/v1/vms/{vm}/files", params={"path": F}, content=b"x")
    assert (await server.client.get(f"/v1/vms/{vm}")).status_code == 200
    await server.other.get("/v1/goldens")  # globex's key is checked and cached
    missing, missing_run = str(ULID()), "run_" + str(ULID())

    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/vms/{vm}", {}),
        ("POST", "/v1/vms/{vm}/fork", {"json": {}}),
        ("POST", "/v1/vms/{vm}/runs", {"json": {"command": "echo"}}),
        ("GET", "/v1/vms/{vm}/runs/{run}", {}),
        ("POST", "/v1/vms/{vm}/runs/{run}/cancel", {}),
        ("GET", "/v1/vms/{vm}/files", {"params": {"path": F}}),
        ("PUT", "/v1/vms/{vm}/files", {"params": {"path": F}, "content": b"y"}),
        ("DELETE", "/v1/vms/{vm}", {}),
    ]
    for method, template, kwargs in requests:
        for _ in range(2):  # the second time, after anything the first one cached
            theirs, q_theirs = await _send(
                server, method, template.format(vm=vm, run=run_id), **kwargs
            )
            never, q_never = await _send(
                server, method, template.format(vm=missing, run=missing_run), **kwargs
            )
            assert q_theirs == q_never and q_theirs, (method, template, q_theirs, q_never)
            _same_answer(theirs, never, [vm, run_id], [missing, missing_run])

    # acme's VM is untouched and still answers acme.
    assert (await server.client.get(f"/v1/vms/{vm}")).status_code == 200
    assert (await server.client.get(f"/v1/vms/{vm}/runs/{run_id}")).status_code == 200


async def test_another_orgs_run_in_ones_own_vm_answers_as_a_missing_one(server: Server) -> None:
    acme_vm = (await server.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
    r = await server.client.post(f"/v1/vms/{acme_vm}/runs", json={"command": "echo"})
    acme_run = r.json()["run_id"]
    own_vm = (await server.other.post("/v1/vms/busybox/fork")).json()["vm_id"]
    await server.other.get(f"/v1/vms/{own_vm}")
    missing_run = "run_" + str(ULID())
    for template in ("/v1/vms/{vm}/runs/{run}", "/v1/vms/{vm}/runs/{run}/cancel"):
        method = "GET" if template.endswith("}") else "POST"
        theirs, q_theirs = await _send(server, method, template.format(vm=own_vm, run=acme_run))
        never, q_never = await _send(server, method, template.format(vm=own_vm, run=missing_run))
        assert q_theirs == q_never and q_theirs, (template, q_theirs, q_never)
        _same_answer(theirs, never, [acme_run], [missing_run])


async def test_a_deleted_vm_answers_as_a_missing_one(server: Server) -> None:
    vm = (await server.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
    assert (await server.client.delete(f"/v1/vms/{vm}")).status_code == 204
    await server.client.get("/v1/goldens")
    with _statements(server) as q_deleted:
        gone = await server.client.get(f"/v1/vms/{vm}")
    missing = str(ULID())
    with _statements(server) as q_never:
        never = await server.client.get(f"/v1/vms/{missing}")
    assert q_deleted == q_never
    _same_answer(gone, never, [vm], [missing])


async def test_metrics_need_an_admin_key(server: Server) -> None:
    from arker.server.auth import create_key, list_keys

    for headers in ({}, {"Authorization": "Bearer ark_live_nope"}, {"Authorization": "Basic x"}):
        r = await server.anon.get("/metrics", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await server.client.get("/metrics")  # an org's ordinary key
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "/metrics needs an admin key" in r.json()["error"]["message"]
    assert "arker_" not in r.text

    record, secret = await create_key(server.app.state.db, "ops", admin=True)
    assert record.admin
    assert [k.admin for k in await list_keys(server.app.state.db) if k.id == record.id] == [True]
    r = await server.anon.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200 and "arker_forks_total" in r.text
    # An admin key is an ordinary key of its org everywhere else.
    r = await server.anon.get("/v1/vms", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200 and r.json()["total"] == 0


async def test_the_metrics_listener_serves_metrics_only(server: Server) -> None:
    from arker.server.app import build_metrics_app

    app = build_metrics_app(server.service)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as c:
        r = await c.get("/metrics")
        assert r.status_code == 200 and "arker_forks_total" in r.text
        assert r.headers["content-type"].startswith("text/plain")
        r = await c.get("/v1/vms")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await c.post("/metrics")
        assert r.status_code == 405 and r.json()["error"]["code"] == "invalid_request"
