"""VMs that clean up after themselves, over a real server on the real
engine: a TTL deletes the VM (its storage too), an idle stop ends its
processes and keeps its files, the next run starts it again, PATCH moves a
TTL, and labels filter the list. Sweeps are polled with a generous deadline."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from live import Live

from arker import Arker, ArkerError, ErrorCode

pytestmark = pytest.mark.root

DEADLINE_S = 60.0


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        time.sleep(0.2)


def _counter(live: Live, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", live.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


def _gone(arker: Arker, vm_id: str) -> bool:
    try:
        arker.get(vm_id)
    except ArkerError as exc:
        assert exc.code == ErrorCode.NOT_FOUND
        return True
    return False


def test_a_vm_with_a_ttl_is_deleted_within_seconds(live: Live, arker: Arker) -> None:
    expired_before = _counter(live, "arker_vms_expired_total")
    vm = arker.vm("busybox").fork(ttl_s=2)
    keep = arker.vm("busybox").fork(ttl_s=3600)
    try:
        assert vm.info is not None and vm.info.expires_at is not None
        result = vm.run("echo hi > /home/user/a; sleep 600 &")  # a process left running
        assert result.type == "completed"
        _until("the vm expires", lambda: _gone(arker, vm.vm_id))
        subvolume = live.server.data_dir / "pool" / "vms" / vm.vm_id
        _until("its storage is freed", lambda: not subvolume.exists())
        # The server is the session's: another module's VM with a ttl may expire
        # meanwhile too, so the counter moved by at least this one; the log line
        # is this VM's own.
        assert _counter(live, "arker_vms_expired_total") >= expired_before + 1
        assert live.server.log().count(f"vm {vm.vm_id} of org acme reached its ttl") == 1
        assert not _gone(arker, keep.vm_id)
    finally:
        for c in (vm, keep):
            try:
                c.delete()
            except ArkerError as exc:
                assert exc.code == ErrorCode.NOT_FOUND


def test_idle_stop_keeps_files_and_the_next_run_starts_it(live: Live, arker: Arker) -> None:
    stopped_before = _counter(live, "arker_vms_idle_stopped_total")
    with arker.vm("busybox").fork(idle_stop_s=2) as vm:
        assert vm.info is not None and vm.info.idle_stop_s == 2
        vm.sync.write_file("/home/user/notes.txt", "kept\n")
        started = vm.run("sleep 600 > /dev/null 2>&1 &  echo $!")
        assert started.type == "completed"
        assert vm.get().state == "running"
        _until("the idle vm stops", lambda: vm.get().state == "stopped")
        assert _counter(live, "arker_vms_idle_stopped_total") == stopped_before + 1
        assert f"vm {vm.vm_id} had nothing to do" in live.server.log()
        assert vm.sync.read_file("/home/user/notes.txt") == b"kept\n"  # its files stay
        again = vm.run("cat /home/user/notes.txt; ps | grep -c 'sleep 60[0]' || true")
        assert again.type == "completed" and again.exit_code == 0
        assert again.stdout.split() == [b"kept", b"0"]  # started afresh: the sleep is gone
        assert vm.get().state == "running"


def test_a_run_in_flight_is_not_idle(live: Live, arker: Arker) -> None:
    with arker.vm("busybox").fork(idle_stop_s=1) as vm:
        run = vm.run("sleep 4; echo done", background=True)
        assert run.type == "started"
        _until("the run ends", lambda: vm.run_status(run.run_id).done)
        status = vm.run_status(run.run_id)
        assert status.state == "completed" and status.stdout == b"done\n"


def test_patch_moves_the_ttl_and_labels_filter_the_list(live: Live, arker: Arker) -> None:
    tag = f"e2e-{time.monotonic_ns()}"
    with arker.vm("busybox").fork(ttl_s=2, labels={"run": tag, "team": "ml"}) as vm:
        info = vm.update(ttl_s=3600)
        assert info.expires_at is not None and info.expires_at.timestamp() > time.time() + 3000
        with vm.fork(labels={"run": tag}) as child:
            time.sleep(4)  # past the first TTL: the sweep ran, the VM stays
            assert not _gone(arker, vm.vm_id)
            page = arker.list(label={"run": tag})
            assert [v.vm_id for v in page.items] == [child.vm_id, vm.vm_id] and page.total == 2
            page = arker.list(label={"run": tag, "team": "ml"})
            assert [v.vm_id for v in page.items] == [vm.vm_id]
            page = arker.list(parent_id=vm.vm_id)
            assert [v.vm_id for v in page.items] == [child.vm_id]
            with pytest.raises(ArkerError) as caught:
                arker.list(label={"bad key": "v"})
            assert caught.value.code == ErrorCode.INVALID_REQUEST and caught.value.status == 422
        assert vm.update(ttl_s=None).expires_at is None


def test_another_orgs_vm_cannot_be_patched(live: Live, arker: Arker) -> None:
    with arker.vm("busybox").fork() as vm, live.client("globex") as other:
        with pytest.raises(ArkerError) as caught:
            other.vm(vm.vm_id).update(ttl_s=1)
        assert caught.value.code == ErrorCode.NOT_FOUND and caught.value.status == 404
        assert vm.get().expires_at is None
