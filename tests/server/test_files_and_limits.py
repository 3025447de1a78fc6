"""Files, Upload-Id, body limits, list bounds, and the framework's own errors
in the contract's shape."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

from harness import Server

F = "/home/user/notes.txt"


async def _vm(server: Server) -> str:
    vm_id: str = (await server.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
    return vm_id


async def test_write_read_file(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.put(f"/v1/vms/{vm}/files", params={"path": F}, content=b"\x00\xffhi")
    assert r.status_code == 200
    assert r.json()["size"] == 4 and r.json()["path"] == F
    r = await server.client.get(f"/v1/vms/{vm}/files", params={"path": F})
    assert r.content == b"\x00\xffhi" and r.headers["content-type"] == "application/octet-stream"
    r = await server.client.get(f"/v1/vms/{vm}/files", params={"path": "/home/user/none"})
    assert r.status_code == 404


async def test_bad_paths(server: Server) -> None:
    vm = await _vm(server)
    for path in ("/etc/shadow", "/home/user/../../etc/passwd", "relative", "/home/user"):
        r = await server.client.get(f"/v1/vms/{vm}/files", params={"path": path})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_path", path
        r = await server.client.put(f"/v1/vms/{vm}/files", params={"path": path}, content=b"x")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_path", path
    r = await server.client.get(f"/v1/vms/{vm}/files")
    assert r.status_code == 422


async def test_upload_id_writes_once(server: Server) -> None:
    vm = await _vm(server)
    url, params = f"/v1/vms/{vm}/files", {"path": F}
    headers = {"Upload-Id": "up-1"}
    a = await server.client.put(url, params=params, content=b"one", headers=headers)
    # the file changes in between; the retry must not write it again
    await server.client.put(url, params=params, content=b"changed")
    b = await server.client.put(url, params=params, content=b"one", headers=headers)
    assert a.json() == b.json()
    assert (await server.client.get(url, params=params)).content == b"changed"
    writes = [c for c in server.engine.calls if c.startswith("write ")]
    assert len(writes) == 2
    r = await server.client.put(url, params=params, content=b"two", headers=headers)
    assert r.status_code == 409
    r = await server.client.put(
        url, params={"path": "/home/user/x"}, content=b"one", headers=headers
    )
    assert r.status_code == 409


async def test_a_large_upload_goes_in_pieces_and_replays_exactly(server: Server) -> None:
    vm = await _vm(server)
    url, params = f"/v1/vms/{vm}/files", {"path": F}
    data = os.urandom(9 * 1024 * 1024 + 7)  # more than two pieces of uploads.PIECE_BYTES

    async def chunks(body: bytes) -> AsyncIterator[bytes]:  # as a client streams it
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    headers = {"Upload-Id": "big-1"}
    r = await server.client.put(url, params=params, content=chunks(data), headers=headers)
    assert r.status_code == 200
    assert r.json()["size"] == len(data)
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert (await server.client.get(url, params=params)).content == data
    again = await server.client.put(url, params=params, content=data, headers=headers)
    assert again.json() == r.json()
    other = data[:-1] + b"!"
    r = await server.client.put(url, params=params, content=chunks(other), headers=headers)
    assert r.status_code == 409
    assert len([c for c in server.engine.calls if c.startswith("write ")]) == 1


async def test_file_size_limit(start_server: object) -> None:
    async with start_server(max_file_bytes=10) as s:  # type: ignore[operator]
        vm = await _vm(s)
        url, params = f"/v1/vms/{vm}/files", {"path": F}
        r = await s.client.put(url, params=params, content=b"x" * 11)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(4):
                yield b"xxxx"

        r = await s.client.put(url, params=params, content=chunks())
        assert r.status_code == 413
        assert (await s.client.put(url, params=params, content=b"x" * 10)).status_code == 200


async def test_json_body_limit(start_server: object) -> None:
    async with start_server(max_json_bytes=1000) as s:  # type: ignore[operator]
        vm = await _vm(s)
        r = await s.client.post(f"/v1/vms/{vm}/runs", json={"command": "x" * 2000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"command": "'
            for _ in range(3):
                yield b"x" * 500
            yield b'"}'

        r = await s.client.post(
            f"/v1/vms/{vm}/runs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413


async def test_list_bounds_are_400(server: Server) -> None:
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        r = await server.client.get("/v1/vms", params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", params
    assert (await server.client.get("/v1/vms", params={"limit": "abc"})).status_code == 422
    assert (await server.client.get("/v1/vms", params={"limit": 1000})).status_code == 200


async def test_framework_errors_have_the_contract_shape(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.post(
        f"/v1/vms/{vm}/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = await server.client.put(f"/v1/vms/{vm}")  # PATCH is a route now
    assert r.status_code == 405 and r.json()["error"]["code"] == "invalid_request"
    r = await server.client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": 5})
    assert r.status_code == 422 and r.json()["error"]["details"]["errors"]


async def test_lost_vm_is_410(server: Server) -> None:
    vm = await _vm(server)
    # Its storage vanishes under the server: a restart finds it lost.
    server.engine.disk.vms.pop(vm)
    await server.service._mark_lost()
    assert (await server.client.get(f"/v1/vms/{vm}")).json()["state"] == "lost"
    r = await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo"})
    assert r.status_code == 410 and r.json()["error"]["code"] == "vm_lost"
    r = await server.client.get(f"/v1/vms/{vm}/files", params={"path": F})
    assert r.status_code == 410


async def test_metrics_and_request_ids(server: Server) -> None:
    vm = await _vm(server)
    await server.client.post(f"/v1/vms/{vm}/runs", json={"command": "echo"})
    ids = {(await server.anon.get("/healthz")).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    from arker.server.auth import create_key

    # /metrics spans every org: no key and an org's key are refused, an admin key reads it.
    assert (await server.anon.get("/metrics")).status_code == 401
    r = await server.client.get("/metrics")
    assert r.status_code == 401 and "admin" in r.json()["error"]["message"]
    _, admin = await create_key(server.app.state.db, "ops", admin=True)
    r = await server.anon.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    text = r.text
    assert (
        'arker_http_requests_total{method="POST",route="/v1/vms/{source}/fork",status="201"} 1'
        in text
    )
    assert "arker_forks_total 1" in text
    assert "arker_runs_started_total 1" in text
    assert 'arker_runs_finished_total{state="completed"} 1' in text
    assert "arker_http_request_duration_seconds_bucket" in text
    assert "arker_vms_running 1" in text
    assert "arker_storage_delete_pending 0" in text
