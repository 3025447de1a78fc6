"""Attacks on a VM's memory and process table, as the review made them, on a
real server: fill /tmp, fork-bomb, leave the pids limit full, fork past a
quota. Every VM is deleted by its id."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from live import Live, make_live, stop_live

from arker import Arker, ArkerError, Computer

PID1_START = "cut -d' ' -f22 /proc/1/stat"


@pytest.fixture
def vm(arker: Arker) -> Iterator[Computer]:
    with arker.vm("busybox").fork() as computer:
        yield computer


def _pid1(vm: Computer) -> bytes:
    r = vm.run(PID1_START)
    assert r.type == "completed" and r.exit_code == 0, r
    return r.stdout


def test_filling_tmp_leaves_the_vm_alive(vm: Computer) -> None:
    before = _pid1(vm)
    fill = vm.run("dd if=/dev/zero of=/tmp/fill bs=1M count=2000; df -k /tmp | tail -1")
    assert fill.type == "completed" and not fill.oom_killed, fill
    assert b"No space left on device" in fill.stderr
    size_kib = int(fill.stdout.split()[1])
    assert size_kib <= 256 * 1024  # a quarter of the 1 GiB memory limit
    # Still running commands, with the same PID 1, and memory to spare: dd
    # holds its whole 300 MiB block in memory.
    assert _pid1(vm) == before
    alloc = vm.run("dd if=/dev/zero of=/dev/null bs=300M count=1 2>&1")
    assert alloc.type == "completed" and alloc.exit_code == 0 and not alloc.oom_killed, alloc
    assert b"1+0 records out" in alloc.stdout
    assert vm.run("rm /tmp/fill && echo ok").stdout == b"ok\n"


# busybox sh will not name a function ":"; each process forks for ever, and one
# whose fork fails exits, so the bomb churns at pids.max until killed.
BOMB = "b(){ while :; do b & done; }; b"


def _refused_or_warned(vm: Computer) -> bool:
    """A run against a full process table: 409 when PID 1 cannot fork it; when
    it slips into a slot the bomb freed, it carries a pids_exhausted warning."""
    try:
        r = vm.run("true")
    except ArkerError as exc:
        assert exc.code == "conflict" and exc.status == 409, exc
        return True
    return r.type == "completed" and [w.code for w in r.warnings] == ["pids_exhausted"]


def test_fork_bomb_then_restart(vm: Computer) -> None:
    vm.run("echo kept > /home/user/before")
    before = _pid1(vm)
    started = vm.run(BOMB, background=True)
    assert started.type == "started"
    deadline = time.monotonic() + 30
    while vm.run_status(started.run_id).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)  # the top shell gives up once its first fork fails
    # The bomb can die out (when every one of its processes fails to fork at
    # once, all exit): a run after that is plainly completed. It was full.
    assert any(_refused_or_warned(vm) for _ in range(5))
    info = vm.restart()
    assert info.vm_id == vm.vm_id and info.state == "running"
    assert _pid1(vm) != before  # a new PID 1
    assert vm.run("cat /home/user/before").stdout == b"kept\n"
    calm = vm.run("ps -o pid | wc -l")  # the bomb is gone: a header, PID 1, sh, ps, wc
    assert calm.type == "completed" and int(calm.stdout) < 10 and calm.warnings == [], calm


def test_restart_fails_runs_in_flight(vm: Computer) -> None:
    started = vm.run("sleep 1000", background=True)
    assert started.type == "started"
    vm.restart()
    status = vm.run_status(started.run_id)
    assert status.state == "failed" and status.failure_reason == "the vm was restarted", status
    assert vm.run("echo again").stdout == b"again\n"


def test_restart_of_a_missing_vm(arker: Arker) -> None:
    with pytest.raises(ArkerError) as exc:
        arker.vm("01NOSUCHVM0000000000000000").restart()
    assert exc.value.code == "not_found"


def test_run_that_leaves_the_pids_limit_full_warns(vm: Computer) -> None:
    # 600 sleepers for a limit of 512: forks start failing, the loop ends,
    # and the run returns with the table full of what it left behind.
    fill = "i=0; while [ $i -lt 600 ]; do sleep 1000 & i=$((i+1)); done 2>/dev/null; exit 0"
    r = vm.run(fill)
    assert r.type == "completed", r
    assert [w.code for w in r.warnings] == ["pids_exhausted"], r.warnings
    assert "512" in r.warnings[0].message
    status = vm.run_status(r.run_id)
    assert [w.code for w in status.warnings] == ["pids_exhausted"]
    # The filler's own shell has exited: a slot or so is free, and whatever
    # runs in it is told the VM is still full.
    again = vm.run("true")
    assert [w.code for w in again.warnings] == ["pids_exhausted"], again
    vm.restart()
    calm = vm.run("echo calm")
    assert calm.stdout == b"calm\n" and calm.warnings == []


@pytest.fixture(scope="module")
def quota_live() -> Iterator[Live]:
    server = make_live(None, "--org-max-vms", "2")
    try:
        yield server
    finally:
        stop_live(server)


def test_fork_past_an_org_quota(quota_live: Live) -> None:
    with quota_live.client("acme") as arker, quota_live.client("globex") as other:
        made = [arker.vm("busybox").fork() for _ in range(2)]
        try:
            with pytest.raises(ArkerError) as exc:
                arker.vm("busybox").fork()
            assert exc.value.code == "quota_exceeded" and exc.value.status == 429
            details = exc.value.details or {}
            assert details["limit"] == "org_max_vms"
            assert (details["max"], details["current"], details["requested"]) == (2, 2, 1)
            with other.vm("busybox").fork():  # another org's quota is its own
                pass
            made.pop().delete()  # a deleted VM no longer counts
            made.append(arker.vm("busybox").fork())
        finally:
            for computer in made:
                computer.delete()
