"""Host loss with durable VMs, on a real cluster: PostgreSQL, SeaweedFS as
the S3 store, two host agents and two API replicas. A durable VM's
background run is interrupted by SIGKILLing its host; the run completes on
the other host with retry_count 1 and the files as of the run's start plus
the rerun's writes; a non-durable VM there answers vm_lost; the killed host,
restarted, reruns nothing and deletes its copies. The time from the lease's
expiry to the run's restart is printed (and written to
$ARKER_TAKEOVER_FIGURES if set), never asserted."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterkit import NEEDS_CLUSTER, Cluster

from arker import Arker, ArkerError

pytestmark = NEEDS_CLUSTER

SEAWEED_PORT_BASE = 18380  # 18380-18389


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from arker.cluster.local import start_seaweed

    where = Path(tempfile.mkdtemp(prefix="ccore-weed-", dir="/tmp"))
    weed = start_seaweed(where, SEAWEED_PORT_BASE)
    try:
        c = Cluster.create(blob_url=weed.blob_url("ccore", "takeover"), env=weed.env())
        try:
            c.add_host()
            c.add_host()
            c.add_replica()
            c.add_replica()
            yield c
        finally:
            left = c.close()
            assert not left, left
    finally:
        weed.stop()
        shutil.rmtree(where, ignore_errors=True)


def _lease_expired_at(c: Cluster, host_id: str) -> float:
    import asyncpg

    async def go() -> float:
        conn = await asyncpg.connect(c.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            value = await conn.fetchval(
                "SELECT lease_expires_at FROM cluster_hosts WHERE id = $1", host_id
            )
            return float(value)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_a_durable_run_resumes_on_another_host_exactly_once(cluster: Cluster) -> None:
    one = Arker(api_key=cluster.keys["acme"], base_url=cluster.replicas[0].url)
    two = Arker(api_key=cluster.keys["acme"], base_url=cluster.replicas[1].url)
    vm = one.vm("busybox").fork(name="durable", durable=True)
    old_host = vm.get().host
    vm.run("echo before > /home/user/state")
    plain = vm.fork(name="plain")  # not durable, on the same host (a snapshot is local)
    assert plain.get().host == old_host and not plain.get().durable
    command = (
        "echo started; echo attempt >> /home/user/log; cat /home/user/state >> /home/user/log;"
        " sleep 3; echo done >> /home/user/log; echo finished"
    )
    started = vm.run(command, background=True)
    deadline = time.monotonic() + 30
    while b"started" not in two.vm(vm.vm_id).run_status(started.run_id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    host = next(h for h in cluster.hosts if h.host_id == old_host)
    host.kill()  # mid-run: "attempt" is in its copy of the log, "done" is not

    deadline = time.monotonic() + 90
    while (status := two.vm(vm.vm_id).run_status(started.run_id)).state == "running":
        assert time.monotonic() < deadline, "the run did not complete elsewhere"
        time.sleep(0.1)
    assert status.state == "completed", status
    assert status.retry_count == 1 and status.exit_code == 0
    assert status.stdout == b"started\nfinished\n"
    assert vm.get().host not in (None, old_host)
    # As of the run's start (the checkpoint), plus the rerun's writes, once.
    assert one.vm(vm.vm_id).sync.read_file("/home/user/log") == b"attempt\nbefore\ndone\n"
    assert two.vm(vm.vm_id).run("cat /home/user/state").stdout == b"before\n"

    expired = _lease_expired_at(cluster, old_host or "")
    assert status.started_at is not None
    at = status.started_at
    restarted = (at if isinstance(at, datetime) else datetime.fromisoformat(str(at))).timestamp()
    figure = f"takeover: run restarted {restarted - expired:.2f} s after the lease expired"
    print(figure)
    out = os.environ.get("ARKER_TAKEOVER_FIGURES")
    if out:
        with open(out, "a") as f:
            f.write(figure + "\n")

    deadline = time.monotonic() + 30
    while plain.get().state != "lost":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with pytest.raises(ArkerError) as err:
        two.vm(plain.vm_id).run("true")
    assert err.value.code == "vm_lost" and err.value.status == 410

    # The killed host comes back: it reruns nothing and deletes its copies.
    host.start()
    for vm_id in (vm.vm_id, plain.vm_id):
        gone = f"vm {vm_id} is not placed on this host any more: deleting it here"
        deadline = time.monotonic() + 20
        while gone not in host.log():
            assert time.monotonic() < deadline, host.log()[-3000:]
            time.sleep(0.2)
    time.sleep(1.5)
    again = one.vm(vm.vm_id).run_status(started.run_id)
    assert again.state == "completed" and again.retry_count == 1
    assert one.vm(vm.vm_id).sync.read_file("/home/user/log") == b"attempt\nbefore\ndone\n"
    plain.delete()
    vm.delete()
