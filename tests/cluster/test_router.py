"""The router (and replica loss) through the public API: two real host agents, two API replicas
(`arker serve --cluster`) on one PostgreSQL. Forks of a golden go to a live
host and forks of a VM to its host; any replica serves any VM; a host killed
with SIGKILL leaves its non-durable VMs lost (410 vm_lost, state lost) on
every replica; restarted, it deletes its copy of them and runs nothing."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterkit import NEEDS_CLUSTER, Cluster

from arker import Arker, ArkerError

pytestmark = NEEDS_CLUSTER


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.create()
    try:
        c.add_host()
        c.add_host()
        c.add_replica()
        c.add_replica()
        yield c
    finally:
        left = c.close()
        assert not left, left


def _client(c: Cluster, replica: int) -> Arker:
    return Arker(api_key=c.keys["acme"], base_url=c.replicas[replica].url)


def test_vms_live_on_hosts_and_any_replica_serves_them(cluster: Cluster) -> None:
    one, two = _client(cluster, 0), _client(cluster, 1)
    assert "busybox" in [g.name for g in one.goldens()]
    with one.vm("busybox").fork(name="routed") as vm:
        info = vm.get()
        hosts = {h.host_id for h in cluster.hosts}
        assert info.host in hosts
        assert vm.run("echo hi > /home/user/f; hostname").stdout == b"routed\n"
        other = two.get(vm.vm_id)  # the other replica finds it on the same host
        assert other.host == info.host
        assert two.vm(vm.vm_id).sync.read_file("/home/user/f") == b"hi\n"
        with vm.fork() as child:
            assert child.get().host == info.host  # a snapshot is local: the same host
            assert child.sync.read_file("/home/user/f") == b"hi\n"
        started = vm.run("for i in 1 2 3; do echo $i; sleep 1; done", background=True)
        seen: list[tuple[bytes, bool]] = []  # each output event, and whether the run was done
        for event in two.vm(vm.vm_id).run_events(started.run_id):
            if event.type == "stdout":
                state = two.vm(vm.vm_id).run_status(started.run_id).state
                seen.append((event.data, state != "running"))
        assert b"".join(data for data, _ in seen) == b"1\n2\n3\n"
        assert not seen[0][1]  # streamed live from the host, not replayed at the end
    with pytest.raises(ArkerError) as err:
        one.get(vm.vm_id)
    assert err.value.code == "not_found"


def test_a_killed_host_leaves_its_vms_lost_and_cleans_up_when_back(cluster: Cluster) -> None:
    one, two = _client(cluster, 0), _client(cluster, 1)
    vm = one.vm("busybox").fork(name="doomed")
    host_id = vm.get().host
    host = next(h for h in cluster.hosts if h.host_id == host_id)
    vm.run("echo kept > /home/user/f")
    started = vm.run("sleep 120", background=True)
    host.kill()
    deadline = time.monotonic() + 30
    while True:
        try:
            one.get(vm.vm_id)
            state = one.get(vm.vm_id).state
        except ArkerError:
            state = "?"
        if state == "lost" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state == "lost"
    for client in (one, two):
        with pytest.raises(ArkerError) as err:
            client.vm(vm.vm_id).run("true")
        assert err.value.code == "vm_lost" and err.value.status == 410
        with pytest.raises(ArkerError) as err:
            client.vm(vm.vm_id).sync.read_file("/home/user/f")
        assert err.value.code == "vm_lost"
    deadline = time.monotonic() + 10
    while two.vm(vm.vm_id).run_status(started.run_id).state == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert two.vm(vm.vm_id).run_status(started.run_id).state == "failed"
    # New VMs go to the host still alive.
    with one.vm("busybox").fork() as fresh:
        assert fresh.get().host != host_id
    # Back: it holds a new lease, deletes its copy of the lost VM, runs nothing.
    host.start()
    deleted = f"vm {vm.vm_id} is not placed on this host any more: deleting it here"
    deadline = time.monotonic() + 15
    while deleted not in host.log():
        assert time.monotonic() < deadline, host.log()[-3000:]
        time.sleep(0.2)
    assert one.get(vm.vm_id).state == "lost"  # and it stays lost: nothing replaced it
    one.vm(vm.vm_id).delete()


def test_killing_a_replica_loses_nothing_it_acknowledged(cluster: Cluster) -> None:
    """A foreground run in flight on a replica that is SIGKILLed: the SDK's
    retry with the same idempotency key, to the other replica, gets the
    run's answer; a fork acknowledged by it is there on the other."""
    first, second = cluster.replicas
    a = Arker(api_key=cluster.keys["acme"], base_url=first.url)
    b = Arker(api_key=cluster.keys["acme"], base_url=second.url)
    vm = a.vm("busybox").fork(name="replica-loss", idempotency_key="ccore-fork-1")
    assert b.get(vm.vm_id).name == "replica-loss"
    # The same fork again, to the other replica: the same VM.
    assert (
        b.vm("busybox").fork(name="replica-loss", idempotency_key="ccore-fork-1").vm_id == vm.vm_id
    )

    import threading

    import httpx

    answer: dict[str, object] = {}

    def call() -> None:
        try:
            answer["r"] = httpx.post(
                f"{first.url}/v1/vms/{vm.vm_id}/runs",
                json={"command": "sleep 2; echo slow-done"},
                headers={
                    "Authorization": f"Bearer {cluster.keys['acme']}",
                    "Idempotency-Key": "ccore-run-1",
                },
                timeout=30,
            )
        except httpx.HTTPError as exc:
            answer["error"] = exc

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.8)
    first.kill()  # mid-request
    t.join(30)
    assert "error" in answer  # the client saw no answer: it retries
    retried = b.vm(vm.vm_id).run("sleep 2; echo slow-done", idempotency_key="ccore-run-1")
    assert retried.type == "completed" and retried.stdout == b"slow-done\n"
    again = b.vm(vm.vm_id).run("sleep 2; echo slow-done", idempotency_key="ccore-run-1")
    assert again.type == "completed" and again.run_id == retried.run_id  # the same answer
    assert f"adopting run {retried.run_id}" in second.log()  # the other replica recorded it
    first.start()
    vm.delete()


def test_a_background_run_of_a_killed_replica_is_adopted_and_finishes(cluster: Cluster) -> None:
    """A background run started through a replica that is then SIGKILLed goes
    on on its host; once that replica's lease lapses, the other replica takes
    the run over and records its end, so its status does not say `running`
    for ever (nobody waits on it in the foreground)."""
    first, second = cluster.replicas
    a = Arker(api_key=cluster.keys["acme"], base_url=first.url)
    b = Arker(api_key=cluster.keys["acme"], base_url=second.url)
    vm = a.vm("busybox").fork(name="orphaned-run")
    try:
        started = vm.run("sleep 2; echo orphan-done", background=True)
        first.kill()
        assert b.vm(vm.vm_id).run_status(started.run_id).state == "running"
        deadline = time.monotonic() + 60  # a hang guard, not a speed bound
        status = b.vm(vm.vm_id).run_status(started.run_id)
        while status.state == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            status = b.vm(vm.vm_id).run_status(started.run_id)
        assert status.state == "completed", status
        assert status.exit_code == 0 and status.stdout == b"orphan-done\n"
        assert f"run {started.run_id} of vm {vm.vm_id}: its replica's lease lapsed" in second.log()
    finally:
        first.start()
        b.vm(vm.vm_id).delete()
