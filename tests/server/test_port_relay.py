"""The port relay over the fake engine: a VM's port is a real local server
(port_backend.py), so HTTP, streaming and WebSockets go through the relay for
real; every answer is checked against the contract."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import websockets
from contract_check import check
from harness import Server
from port_backend import backend, serve_app
from ulid import ULID
from websockets.asyncio.client import connect

PORT = 8000
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def app_address() -> Iterator[tuple[str, int]]:
    with backend() as address:
        yield address


async def _vm(server: Server, address: tuple[str, int] | None = None, port: int = PORT) -> str:
    vm: str = (await server.client.post("/v1/vms/busybox/fork")).json()["vm_id"]
    if address is not None:
        server.engine.ports[(vm, port)] = address
    return vm


def _no_leaks(server: Server) -> None:
    assert server.engine.port_sockets, "no connection was made"
    assert all(s.fileno() == -1 for s in server.engine.port_sockets), "a relay left a socket open"


def _headers(doc: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in doc["headers"]}


async def test_get_is_relayed_with_path_query_and_forwarded_headers(
    server: Server, app_address: tuple[str, int]
) -> None:
    vm = await _vm(server, app_address)
    r = await server.client.get(f"/v1/vms/{vm}/ports/{PORT}/echo/a%20b?x=1&y=two")
    assert r.status_code == 200, r.text
    assert r.headers["x-arker-relayed"] == "1"
    assert r.headers["set-cookie"] == "app=1; Path=/"  # the app's own headers come back
    doc = r.json()
    assert doc["method"] == "GET" and doc["target"] == "/echo/a%20b?x=1&y=two"
    sent = _headers(doc)
    assert sent["host"] == "arker.test"  # the original Host is kept
    assert sent["x-forwarded-host"] == "arker.test"
    assert sent["x-forwarded-proto"] == "http"
    assert "x-forwarded-for" in sent
    assert "authorization" not in sent  # the API key never reaches the VM
    assert server.keys["acme"] not in r.text
    _no_leaks(server)


async def test_empty_path_and_every_method(server: Server, app_address: tuple[str, int]) -> None:
    vm = await _vm(server, app_address)
    r = await server.client.get(f"/v1/vms/{vm}/ports/{PORT}/")
    assert r.status_code == 200 and r.json()["target"] == "/"
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = await server.client.request(method, f"/v1/vms/{vm}/ports/{PORT}/m", content=b"abc")
        assert r.status_code == 200, (method, r.text)
        assert (r.json()["method"], r.json()["size"]) == (method, 3)
    r = await server.client.head(f"/v1/vms/{vm}/ports/{PORT}/echo")
    assert r.status_code == 200 and r.content == b""
    # The app's own statuses pass through, marked as the app's.
    r = await server.client.get(f"/v1/vms/{vm}/ports/{PORT}/status/404")
    assert (r.status_code, r.text, r.headers["x-arker-relayed"]) == (404, "from the app", "1")
    _no_leaks(server)


async def test_stopped_vm_is_started(server: Server, app_address: tuple[str, int]) -> None:
    vm = await _vm(server, app_address)
    assert (await server.client.get(f"/v1/vms/{vm}")).json()["state"] == "stopped"
    assert (await server.client.get(f"/v1/vms/{vm}/ports/{PORT}/")).status_code == 200
    assert (await server.client.get(f"/v1/vms/{vm}")).json()["state"] == "running"


async def test_closed_port_is_502_at_once(server: Server) -> None:
    vm = await _vm(server)
    r = await server.client.get(f"/v1/vms/{vm}/ports/9999/")
    assert r.status_code == 502
    assert r.json()["error"] == {
        "code": "unavailable",
        "message": f"nothing listens on port 9999 in vm {vm}",
    }
    assert "x-arker-relayed" not in r.headers


@pytest.mark.parametrize("port", ["0", "65536", "http"])
async def test_port_outside_the_range_is_422(server: Server, port: str) -> None:
    vm = await _vm(server)
    r = await server.client.get(f"/v1/vms/{vm}/ports/{port}/")
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith("path.port")
    assert not any(c.startswith("connect") for c in server.engine.calls)


async def test_other_org_and_missing_vm_answer_alike(
    server: Server, app_address: tuple[str, int]
) -> None:
    vm = await _vm(server, app_address)
    missing = str(ULID())
    theirs = await server.other.get(f"/v1/vms/{vm}/ports/{PORT}/echo")
    never = await server.other.get(f"/v1/vms/{missing}/ports/{PORT}/echo")
    assert theirs.status_code == never.status_code == 404
    assert theirs.text.replace(vm, "ID") == never.text.replace(missing, "ID")
    assert not any(c.startswith("connect") for c in server.engine.calls)
    r = await server.other.post(f"/v1/vms/{vm}/ports/{PORT}/token")
    assert r.status_code == 404
    r = await server.anon.get(f"/v1/vms/{vm}/ports/{PORT}/echo")
    assert r.status_code == 401


async def test_deleted_vm_is_404_and_lost_vm_is_410(
    server: Server, app_address: tuple[str, int]
) -> None:
    gone = await _vm(server, app_address)
    assert (await server.client.delete(f"/v1/vms/{gone}")).status_code == 204
    assert (await server.client.get(f"/v1/vms/{gone}/ports/{PORT}/")).status_code == 404
    lost = await _vm(server, app_address)
    server.engine.disk.vms.pop(lost)
    await server.service._mark_lost()
    r = await server.client.get(f"/v1/vms/{lost}/ports/{PORT}/")
    assert r.status_code == 410 and r.json()["error"]["code"] == "vm_lost"


async def test_large_bodies_stream_both_ways(server: Server, app_address: tuple[str, int]) -> None:
    vm = await _vm(server, app_address)
    size = 24 * MIB  # over the 16 MiB JSON limit: relayed bodies get the file limit
    piece = b"\x00\x01" * (MIB // 2)

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    expected = hashlib.sha256(piece * (size // len(piece))).hexdigest()
    r = await server.client.put(f"/v1/vms/{vm}/ports/{PORT}/upload", content=pieces())
    assert r.status_code == 200, r.text
    assert (r.json()["size"], r.json()["sha256"]) == (size, expected)
    r = await server.client.get(f"/v1/vms/{vm}/ports/{PORT}/big?n={size}")
    assert r.status_code == 200 and len(r.content) == size
    _no_leaks(server)


async def test_body_over_the_file_limit_is_413(
    start_server: Any, app_address: tuple[str, int]
) -> None:
    async with start_server(max_file_bytes=MIB) as server:
        vm = await _vm(server, app_address)
        r = await server.client.post(f"/v1/vms/{vm}/ports/{PORT}/up", content=b"x" * (MIB + 1))
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def _token(server: Server, vm: str, port: int = PORT, **body: Any) -> dict[str, Any]:
    r = await server.client.post(f"/v1/vms/{vm}/ports/{port}/token", json=body or None)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_token_opens_the_port_without_a_key(
    server: Server, app_address: tuple[str, int]
) -> None:
    vm = await _vm(server, app_address)
    doc = await _token(server, vm)
    url = httpx.URL(doc["url"])
    assert str(url).startswith(f"http://arker.test/v1/vms/{vm}/ports/{PORT}/?arker_token=")
    token = url.params["arker_token"]
    r = await server.anon.get(
        f"/v1/vms/{vm}/ports/{PORT}/echo", params={"arker_token": token, "q": 1}
    )
    assert r.status_code == 200, r.text
    assert r.json()["target"] == "/echo?q=1"  # the token is not passed on
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "arker" in v)
    assert cookie.startswith(f"arker_port_token={token}; Path=/v1/vms/{vm}/ports/{PORT}/;")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # Then the cookie alone is enough, and it is not passed on either.
    r = await server.anon.get(
        f"/v1/vms/{vm}/ports/{PORT}/echo",
        headers={"Cookie": f"theme=dark; arker_port_token={token}"},
    )
    assert r.status_code == 200, r.text
    assert _headers(r.json())["cookie"] == "theme=dark"
    assert "set-cookie" not in r.headers or "arker" not in r.headers["set-cookie"]


async def test_bad_tokens_are_404(server: Server, app_address: tuple[str, int]) -> None:
    vm = await _vm(server, app_address)
    other_vm = await _vm(server, app_address)
    token = httpx.URL((await _token(server, vm))["url"]).params["arker_token"]
    stale, _ = server.service.port_tokens.issue("acme", vm, PORT, -1)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    cases = {
        "stale": (vm, PORT, stale),
        "forged": (vm, PORT, forged),
        "garbage": (vm, PORT, "not-a-token"),
        "other vm": (other_vm, PORT, token),
        "other port": (vm, 8001, token),
    }
    for what, (target, port, value) in cases.items():
        r = await server.anon.get(f"/v1/vms/{target}/ports/{port}/", params={"arker_token": value})
        assert r.status_code == 404, what
        assert r.json()["error"] == {"code": "not_found", "message": f"vm {target!r} not found"}
    # A token of another org's VM opens nothing once the VM is gone.
    await server.client.delete(f"/v1/vms/{vm}")
    r = await server.anon.get(f"/v1/vms/{vm}/ports/{PORT}/", params={"arker_token": token})
    assert r.status_code == 404


async def test_token_ttl(server: Server) -> None:
    vm = await _vm(server)
    before = time.time()
    doc = await _token(server, vm, ttl_s=60)
    at = datetime.fromisoformat(doc["expires_at"]).timestamp()
    assert before + 59 <= at <= time.time() + 61
    default = datetime.fromisoformat((await _token(server, vm))["expires_at"]).timestamp()
    assert before + 3599 <= default <= time.time() + 3601
    for ttl in (0, 86401):
        r = await server.client.post(f"/v1/vms/{vm}/ports/{PORT}/token", json={"ttl_s": ttl})
        assert r.status_code == 422 and "ttl_s" in r.json()["error"]["message"]


async def test_preview_host_is_relayed_by_host_header(
    start_server: Any, app_address: tuple[str, int]
) -> None:
    async with start_server(preview_domain="example.test") as server:
        vm = await _vm(server, app_address)
        doc = await _token(server, vm)
        host = f"{PORT}-{vm.lower()}.example.test"
        assert doc["url"].startswith(f"http://{host}/?arker_token=")
        token = httpx.URL(doc["url"]).params["arker_token"]
        browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app))
        api_path = f"/v1/vms/{vm}/ports/{PORT}"
        async with browser:
            r = await browser.get(f"http://{host}/echo/x?arker_token={token}&a=1")
            check(r, path=f"{api_path}/echo/x")
            assert r.status_code == 200, r.text
            assert r.json()["target"] == "/echo/x?a=1"
            assert _headers(r.json())["host"] == host
            assert "Path=/;" in r.headers.get_list("set-cookie")[-1]
            # The cookie is kept by the browser for that host: the app's links work.
            r = await browser.get(f"http://{host}/token")
            check(r, path=f"{api_path}/echo")
            assert r.status_code == 200 and r.json()["target"] == "/token"
            r = await browser.post(f"http://{host.upper()}/token", content=b"t")
            assert r.status_code == 200 and r.json()["method"] == "POST"
            # With no token and no cookie: the API key, and only the key, opens it.
            browser.cookies.clear()
            r = await browser.get(f"http://{host}/")
            assert r.status_code == 401
            key = {"Authorization": f"Bearer {server.keys['acme']}"}
            r = await browser.get(f"http://{host}/", headers=key)
            assert r.status_code == 200 and "authorization" not in _headers(r.json())
            r = await browser.get(
                f"http://{host}/", headers={"Authorization": f"Bearer {server.keys['globex']}"}
            )
            assert r.status_code == 404
            # The preview path cannot be reached on the API's own host.
            r = await browser.get("http://arker.test/_preview/", headers=key)
            assert r.status_code == 404
            r = await browser.get(f"http://70000-{vm.lower()}.example.test/", headers=key)
            assert r.status_code == 422


async def test_websocket_echo_through_the_relay(
    server: Server, app_address: tuple[str, int]
) -> None:
    vm = await _vm(server, app_address)
    key = {"Authorization": f"Bearer {server.keys['acme']}"}
    async with serve_app(server.app) as base:
        url = base.replace("http", "ws") + f"/v1/vms/{vm}/ports/{PORT}/ws?x=1"
        async with connect(url, additional_headers=key, subprotocols=["chat"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "chat"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\xff" * 50_000)
            assert await ws.recv() == b"\x00\xff" * 50_000
        # Refusals close with 4000 + the status, the message as the reason.
        closed = base.replace("http", "ws") + f"/v1/vms/{vm}/ports/9/"
        async with connect(closed, additional_headers=key) as ws:
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
        assert ws.close_code == 4502
        assert ws.close_reason == f"nothing listens on port 9 in vm {vm}"
    _no_leaks(server)


async def test_tcp_relay_carries_raw_bytes(server: Server, app_address: tuple[str, int]) -> None:
    vm = await _vm(server, app_address)
    key = {"Authorization": f"Bearer {server.keys['acme']}"}
    async with serve_app(server.app) as base:
        url = base.replace("http", "ws") + f"/v1/vms/{vm}/tcp/{PORT}"
        async with connect(url, additional_headers=key) as ws:
            await ws.send(b"GET /echo HTTP/1.1\r\nHost: inside\r\nConnection: close\r\n\r\n")
            answer = b""
            with pytest.raises(websockets.ConnectionClosedOK):
                while True:
                    answer += await ws.recv()  # type: ignore[operator]
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b'"target": "/echo"' in answer
        other = {"Authorization": f"Bearer {server.keys['globex']}"}
        async with connect(url, additional_headers=other) as ws:
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4404, f"vm {vm!r} not found")
    _no_leaks(server)
