"""Health, auth, goldens, VMs: the plain paths and their errors."""

from __future__ import annotations

from harness import Server


async def test_health_needs_no_key(server: Server) -> None:
    r = await server.anon.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.headers["x-request-id"].startswith("req_")


async def test_auth_missing_wrong_revoked(server: Server) -> None:
    assert (await server.anon.get("/v1/goldens")).status_code == 401
    r = await server.anon.get("/v1/goldens", headers={"Authorization": "Bearer ark_live_nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await server.anon.get("/v1/goldens", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


async def test_revoked_key_is_refused(start_server: object) -> None:
    from arker.server.auth import create_key, list_keys, revoke_key

    async with start_server(auth_cache_s=0.0) as s:  # type: ignore[operator]
        db = s.app.state.db
        _, secret = await create_key(db, "acme")
        headers = {"Authorization": f"Bearer {secret}"}
        assert (await s.anon.get("/v1/goldens", headers=headers)).status_code == 200
        key_id = [k for k in await list_keys(db) if k.revoked_at is None][-1].id
        assert await revoke_key(db, key_id)
        assert (await s.anon.get("/v1/goldens", headers=headers)).status_code == 401


async def test_goldens(server: Server) -> None:
    r = await server.client.get("/v1/goldens")
    assert [g["name"] for g in r.json()["items"]] == ["busybox"]


async def test_fork_get_list_delete(server: Server) -> None:
    r = await server.client.post("/v1/vms/busybox/fork", json={"name": "box-1"})
    assert r.status_code == 201
    vm = r.json()
    assert vm["parent_id"] is None and vm["base_image"] == "busybox" and vm["region"] == "local"
    assert vm["durable"] is False and vm["state"] == "stopped" and len(vm["vm_id"]) == 26
    child = (await server.client.post(f"/v1/vms/{vm['vm_id']}/fork")).json()
    assert child["parent_id"] == vm["vm_id"] and child["base_image"] == "busybox"
    assert child["name"] is None
    grandchild = (await server.client.post(f"/v1/vms/{child['vm_id']}/fork", json={})).json()
    assert grandchild["base_image"] == "busybox" and grandchild["parent_id"] == child["vm_id"]

    assert (await server.client.get(f"/v1/vms/{vm['vm_id']}")).json() == vm
    page = (await server.client.get("/v1/vms")).json()
    assert page["total"] == 3
    assert [v["vm_id"] for v in page["items"]] == [grandchild["vm_id"], child["vm_id"], vm["vm_id"]]
    page = (await server.client.get("/v1/vms", params={"limit": 1, "offset": 1})).json()
    assert [v["vm_id"] for v in page["items"]] == [child["vm_id"]] and page["total"] == 3

    r = await server.client.delete(f"/v1/vms/{vm['vm_id']}")
    assert r.status_code == 204 and r.content == b""
    assert (await server.client.get(f"/v1/vms/{vm['vm_id']}")).status_code == 404
    assert (await server.client.delete(f"/v1/vms/{vm['vm_id']}")).status_code == 404
    assert vm["vm_id"] not in server.engine.vm_ids()


async def test_fork_unknown_source_and_bad_name(server: Server) -> None:
    r = await server.client.post("/v1/vms/nosuchgolden/fork")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await server.client.post("/v1/vms/busybox/fork", json={"name": "-bad-"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = await server.client.post("/v1/vms/busybox/fork", json={"surprise": 1})
    assert r.status_code == 422


async def test_durable_fork_needs_checkpoints(start_server: object) -> None:
    async with start_server(supports_checkpoints=False) as s:  # type: ignore[operator]
        r = await s.client.post("/v1/vms/busybox/fork", json={"durable": True})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_operation"
        assert (
            await s.client.post("/v1/vms/busybox/fork", json={"durable": False})
        ).status_code == 201


async def test_cross_org_is_not_found(server: Server) -> None:
    vm = (await server.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
    run = (await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo hi"})).json()
    await server.client.put(f"/v1/vms/{vm}/files", params={"path": "/home/user/a"}, content=b"a")
    other = server.other
    for r in (
        await other.get(f"/v1/vms/{vm}"),
        await other.delete(f"/v1/vms/{vm}"),
        await other.post(f"/v1/vms/{vm}/fork"),
        await other.post(f"/v1/vms/{vm}/runs", json={"command": "echo hi"}),
        await other.get(f"/v1/vms/{vm}/runs/{run['run_id']}"),
        await other.post(f"/v1/vms/{vm}/runs/{run['run_id']}/cancel"),
        await other.get(f"/v1/vms/{vm}/files", params={"path": "/home/user/a"}),
        await other.put(f"/v1/vms/{vm}/files", params={"path": "/home/user/a"}, content=b"x"),
    ):
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    assert (await other.get("/v1/vms")).json() == {"items": [], "total": 0}
    assert (
        await server.client.get(f"/v1/vms/{vm}/files", params={"path": "/home/user/a"})
    ).content == b"a"


async def test_burst_suffix_region_and_prefix(start_server: object) -> None:
    async with start_server(burst_suffix="uswe", region="aws-us-west-2", api_prefix="/api") as s:  # type: ignore[operator]
        vm = (await s.client.post("/v1/vms/busybox/fork")).json()
        assert vm["vm_id"].endswith("_uswe") and len(vm["vm_id"]) == 31
        assert vm["region"] == "aws-us-west-2"
        assert str(s.client.base_url).endswith("/api/")
        assert (await s.client.get(f"/v1/vms/{vm['vm_id']}")).status_code == 200
