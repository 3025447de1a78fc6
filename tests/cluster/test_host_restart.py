"""A host agent restarted within its lease's TTL (an upgrade, or a crash and
a restart by systemd) keeps its fence, so its VMs stay its own: a
non-durable VM there is not marked lost, its files are all there, and it
runs again through any replica. One host (with a long TTL, so the restart
is surely within it) and one replica."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterkit import NEEDS_CLUSTER, Cluster, HostProc

from arker import Arker

pytestmark = NEEDS_CLUSTER


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.create()
    try:
        c.add_host(lease_ttl_s=60.0)
        c.add_replica()
        yield c
    finally:
        left = c.close()
        assert not left, left


def test_a_host_restarted_within_its_ttl_keeps_its_vms(cluster: Cluster) -> None:
    (host,) = cluster.hosts
    client = Arker(api_key=cluster.keys["acme"], base_url=cluster.replicas[0].url)
    vm = client.vm("busybox").fork(name="survives-restart")
    try:
        vm.run("echo kept > /home/user/f")
        fence_before = _fence(host)
        host.kill()  # SIGKILL: no chance to tidy up
        host.start()
        assert _fence(host) == fence_before  # resumed, not acquired anew
        time.sleep(1.5)  # a few takeover passes of the replica (every 0.1 s)
        got = client.get(vm.vm_id)
        assert got.state != "lost" and got.host == host.host_id
        assert vm.sync.read_file("/home/user/f") == b"kept\n"
        again = vm.run("cat /home/user/f; echo ran")
        assert again.exit_code == 0 and again.stdout == b"kept\nran\n"
        assert "not placed on this host any more" not in host.log()
    finally:
        vm.delete()


def _fence(host: HostProc) -> int:
    body = httpx.get(f"{host.url}/health", timeout=10).json()
    assert body["leased"], body
    return int(body["fence"])
