"""A VM's network policy at the API: what a fork asks for, inherits or gets by
default, the live change, and the 422s of a bad allow-list."""

from __future__ import annotations

from typing import Any

import pytest
from harness import Server

from arker.engine.base import NetworkPolicy


async def _fork(server: Server, source: str = "busybox", **body: Any) -> dict[str, Any]:
    r = await server.client.post(f"/v1/vms/{source}/fork", json=body)
    assert r.status_code == 201, r.text
    vm: dict[str, Any] = r.json()
    return vm


async def test_default_inherit_and_explicit(server: Server) -> None:
    default = await _fork(server)
    assert default["network"] == {"egress": True, "allow": None}  # Settings.egress is on
    assert server.engine.networks[default["vm_id"]] == NetworkPolicy(egress=True)

    listed = await _fork(
        server,
        network={"egress": True, "allow": ["Index.Example.org.", "*.Example.org", "10.1.0.0/16"]},
    )
    assert listed["network"] == {
        "egress": True,
        "allow": ["index.example.org", "*.example.org", "10.1.0.0/16"],  # normalised
    }
    child = await _fork(server, listed["vm_id"])
    assert child["network"] == listed["network"]  # a fork of a VM inherits
    assert server.engine.networks[child["vm_id"]] == NetworkPolicy(
        True, ("index.example.org", "*.example.org", "10.1.0.0/16")
    )
    opened = await _fork(server, listed["vm_id"], network={"egress": True})
    assert opened["network"] == {"egress": True, "allow": None}  # the request wins
    closed = await _fork(server, network={"egress": False})
    assert closed["network"] == {"egress": False, "allow": None}
    got = (await server.client.get(f"/v1/vms/{listed['vm_id']}")).json()
    assert got["network"] == listed["network"]


async def test_server_default_off(start_server: Any) -> None:
    async with start_server(egress=False) as s:
        vm = await _fork(s)
        assert vm["network"] == {"egress": False, "allow": None}


async def test_patch_changes_only_what_is_sent(server: Server) -> None:
    vm = (await _fork(server, network={"egress": True, "allow": ["index.example.org"]}))["vm_id"]
    url = f"/v1/vms/{vm}/network"
    r = await server.client.patch(url, json={"egress": False})
    assert r.status_code == 200 and r.json()["network"] == {
        "egress": False,
        "allow": ["index.example.org"],
    }
    r = await server.client.patch(url, json={"egress": True})
    assert r.json()["network"] == {"egress": True, "allow": ["index.example.org"]}
    r = await server.client.patch(url, json={"allow": None})
    assert r.json()["network"] == {"egress": True, "allow": None}
    assert server.engine.networks[vm] == NetworkPolicy(egress=True)
    # Stored: a later read and a fork see it.
    assert (await server.client.get(f"/v1/vms/{vm}")).json()["network"]["allow"] is None
    assert (await _fork(server, vm))["network"] == {"egress": True, "allow": None}


async def test_patch_not_found_other_org_and_lost(server: Server) -> None:
    r = await server.client.patch("/v1/vms/nope/network", json={"egress": False})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    vm = (await _fork(server))["vm_id"]
    r = await server.other.patch(f"/v1/vms/{vm}/network", json={"egress": False})
    assert r.status_code == 404
    assert server.engine.networks[vm] == NetworkPolicy(egress=True)  # untouched
    server.engine.disk.vms.pop(vm)
    await server.service._mark_lost()
    r = await server.client.patch(f"/v1/vms/{vm}/network", json={"egress": False})
    assert r.status_code == 410 and r.json()["error"]["code"] == "vm_lost"


@pytest.mark.parametrize(
    ("allow", "says"),
    [
        (["10.0.0.0/33"], "network.allow[0]"),
        (["index.example.org", "not a host"], "network.allow[1]"),
        (["foo.*.com"], "wildcard"),
        (["*"], "network.allow[0]"),
        (["::1/128"], "IPv6"),
        (["10.0.0.1/8"], "host bits"),
        ([f"h{i}.example.com" for i in range(257)], "256"),
        ([], "at least one entry"),
        (["x" * 300], "network.allow"),
    ],
)
async def test_bad_allow_lists_are_422(server: Server, allow: list[str], says: str) -> None:
    before = len(server.engine.disk.vms)
    r = await server.client.post(
        "/v1/vms/busybox/fork", json={"network": {"egress": True, "allow": allow}}
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and says in error["message"], error
    assert len(server.engine.disk.vms) == before  # nothing was made
    vm = (await _fork(server))["vm_id"]
    r = await server.client.patch(f"/v1/vms/{vm}/network", json={"allow": allow})
    assert r.status_code == 422 and says in r.json()["error"]["message"]
    assert server.engine.networks[vm] == NetworkPolicy(egress=True)


async def test_bad_shapes_are_422(server: Server) -> None:
    for body in (
        {"network": {"allow": ["index.example.org"]}},  # egress is required
        {"network": {"egress": True, "allow": "index.example.org"}},
        {"network": {"egress": True, "extra": 1}},
    ):
        r = await server.client.post("/v1/vms/busybox/fork", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_request"


async def test_idempotent_fork_keys_the_network(server: Server) -> None:
    headers = {"Idempotency-Key": "net-once"}
    first = await server.client.post(
        "/v1/vms/busybox/fork", json={"network": {"egress": False}}, headers=headers
    )
    again = await server.client.post(
        "/v1/vms/busybox/fork", json={"network": {"egress": False}}, headers=headers
    )
    assert again.json()["vm_id"] == first.json()["vm_id"]
    other = await server.client.post(
        "/v1/vms/busybox/fork", json={"network": {"egress": True}}, headers=headers
    )
    assert other.status_code == 409
