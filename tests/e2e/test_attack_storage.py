"""Attacks on storage, one test per class, on a real server and engine: a VM
filling its disk (and what df says), the files API past a quota, a fork's
quota, the pool's reserve."""

from __future__ import annotations

import pytest
from live import make_live, stop_live

from arker import Arker, ArkerError

FILL = "dd if=/dev/zero of=/home/user/big bs=1M count=64 conv=fsync 2>&1; echo rc=$?"


def test_a_vm_filling_its_disk_hits_its_quota_others_write_on(arker: Arker) -> None:
    full = arker.vm("busybox").fork(resources={"disk_mib": 16})
    other = arker.vm("busybox").fork(resources={"disk_mib": 16})
    try:
        assert full.info is not None and full.info.resources.disk_mib == 16
        r = full.run(FILL)
        assert r.type == "completed"
        assert b"Disk quota exceeded" in r.stdout and b"rc=0" not in r.stdout
        # The files API past the quota: 507 naming the VM's quota, not a 500.
        with pytest.raises(ArkerError) as err:
            full.sync.write_file("/home/user/more", b"x" * (8 * 2**20))
        assert err.value.code == "insufficient_storage" and "quota" in str(err.value)
        # Another VM and a fork of the full one still write: their quotas are their own.
        ok = other.run("dd if=/dev/zero of=/home/user/f bs=1M count=4 conv=fsync && echo ok")
        assert ok.type == "completed" and ok.stdout.endswith(b"ok\n")
        child = full.fork()
        try:
            assert child.info is not None and child.info.resources.disk_mib == 16
            ok = child.run(
                "rm /home/user/big; dd if=/dev/zero of=/home/user/f bs=1M count=4 && echo ok"
            )
            assert ok.stdout.endswith(b"ok\n")
        finally:
            child.delete()
    finally:
        full.delete()
        other.delete()


def test_df_in_a_vm_shows_its_own_quota_as_it_fills(arker: Arker) -> None:
    vm = arker.vm("busybox").fork(resources={"disk_mib": 32})
    try:
        size, used, free = vm.run("df -k / | tail -n 1").stdout.split()[1:4]
        assert int(size) == 32 * 1024 and int(free) > 31 * 1024
        filled = vm.run(FILL + "; sync; df -k / | tail -n 1")
        assert b"Disk quota exceeded" in filled.stdout
        size, used, free = filled.stdout.splitlines()[-1].split()[1:4]
        assert int(size) == 32 * 1024 and int(used) >= 31 * 1024 and int(free) < 1024
    finally:
        vm.delete()


def test_a_fork_above_the_maximum_quota_is_refused(arker: Arker) -> None:
    with pytest.raises(ArkerError) as err:
        arker.vm("busybox").fork(resources={"disk_mib": 10**9})
    assert err.value.code == "invalid_request" and "maximum" in str(err.value)


def test_a_pool_below_its_reserve_refuses_forks_with_507() -> None:
    live = make_live(None, "--pool-reserve-mib", str(2**40))  # more than any disk
    try:
        with live.client() as arker:
            with pytest.raises(ArkerError) as err:
                arker.vm("busybox").fork()
            assert err.value.code == "insufficient_storage" and "reserve" in str(err.value)
    finally:
        stop_live(live)
