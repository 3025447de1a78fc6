"""The jail on a plain directory rootfs: PID 1's namespaces and mounts, and
that starting and stopping a VM leaves no cgroup, process or mount behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest_exec import BareVm, bare_vm, make_busybox_rootfs  # noqa: F401

from arker.engine import _native, jail
from arker.engine._cgroups import Cgroups
from arker.engine.base import Limits
from arker.engine.runner import Runner
from arker.errors import ArkerError

pytestmark = pytest.mark.root


def test_init_is_pid_1_in_its_own_namespaces(bare_vm: BareVm) -> None:  # noqa: F811
    info = bare_vm.run("echo $$; hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; touch /sys/x")
    lines = info.stdout.decode().splitlines()
    assert lines[1] == "bare"
    assert lines[2].strip() == "init"  # no host path shows inside the VM
    assert b"Read-only file system" in info.stderr  # /sys is a read-only sysfs
    for ns in ("mnt", "pid", "net", "uts", "ipc", "cgroup"):
        assert os.readlink(f"/proc/{bare_vm.init.pid}/ns/{ns}") != os.readlink(
            f"/proc/self/ns/{ns}"
        )


def test_mounts_inside_the_vm(bare_vm: BareVm) -> None:  # noqa: F811
    info = bare_vm.run("cat /proc/mounts; ls /dev; echo x > /proc/sys/kernel/hostname", user="root")
    out = info.stdout.decode()
    for point in (" /proc ", " /dev ", " /dev/pts ", " /dev/shm ", " /tmp "):
        assert point in out
    for dev in ("null", "zero", "urandom", "tty", "ptmx", "pts"):
        assert dev in out.split()
    assert info.exit_code != 0  # /proc/sys is read-only
    masked = bare_vm.run("cat /proc/keys /proc/timer_list | wc -c", user="root")
    assert masked.stdout.split() == [b"0"]


def test_vm_mounts_do_not_reach_the_host(bare_vm: BareVm) -> None:  # noqa: F811
    with open("/proc/self/mounts") as f:
        assert str(bare_vm.root) not in f.read()


def test_stop_leaves_no_cgroup_or_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    root = make_busybox_rootfs(tmp_path / "rootfs")
    cgroups = Cgroups(data)
    helper = _native.helper_path(data)
    try:
        init = jail.start_vm(helper, cgroups, "v1", root, hostname="h", limits=Limits())
        assert init.alive()
        assert (cgroups.unified / "v1" / "init").is_dir()
        jail.stop_vm(cgroups, "v1")
        assert not init.alive()
        assert cgroups.vm_ids() == []
        assert not (cgroups.unified / "v1").exists()
        for d in cgroups.limit_roots.values():
            assert not (d / "v1").exists()
    finally:
        cgroups.remove_all()
    for d in {cgroups.unified, *cgroups.limit_roots.values()}:
        assert not d.exists()


def test_start_fails_cleanly_on_a_missing_root(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cgroups = Cgroups(data)
    helper = _native.helper_path(data)
    try:
        with pytest.raises(ArkerError) as err:
            jail.start_vm(helper, cgroups, "v1", tmp_path / "nope", hostname="h", limits=Limits())
        assert err.value.code == "internal"
        assert cgroups.vm_ids() == []
    finally:
        cgroups.remove_all()


def test_cgroup_roots_differ_per_data_dir(tmp_path: Path) -> None:
    assert Cgroups(tmp_path / "a").name != Cgroups(tmp_path / "b").name
    assert Cgroups(tmp_path / "a").name == Cgroups(tmp_path / "a").name


def test_limits_are_written(bare_vm: BareVm) -> None:  # noqa: F811
    c = bare_vm.cgroups
    if c.v2:
        assert (c.unified / bare_vm.vm_id / "memory.max").read_text().strip() == str(256 << 20)
    else:
        mem = c.limit_roots["memory"] / bare_vm.vm_id / "memory.limit_in_bytes"
        assert mem.read_text().strip() == str(256 << 20)
        pids = c.limit_roots["pids"] / bare_vm.vm_id / "pids.max"
        assert pids.read_text().strip() == "512"
        quota = c.limit_roots["cpu"] / bare_vm.vm_id / "cpu.cfs_quota_us"
        assert quota.read_text().strip() == "100000"


def test_symlinked_mount_points_do_not_reach_the_host(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    root = make_busybox_rootfs(tmp_path / "rootfs")
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "marker").write_text("host\n")
    for name in ("tmp", "proc", "dev"):
        target = root / name
        target.rmdir()
        target.symlink_to(host_dir)  # absolute: would resolve on the host before pivot_root
    cgroups = Cgroups(data)
    helper = _native.helper_path(data)
    try:
        init = jail.start_vm(helper, cgroups, "v1", root, hostname="h", limits=Limits())
        vm = BareVm("v1", root, cgroups, Runner(cgroups), init)
        info = vm.run("ls /tmp; touch /tmp/new; ls /dev/null; cat /proc/1/cmdline", user="root")
        assert info.exit_code == 0, info.stderr
        assert b"marker" not in info.stdout
        assert sorted(p.name for p in host_dir.iterdir()) == ["marker"]
    finally:
        cgroups.remove_all()


@pytest.mark.parametrize("cc", ["/nonexistent/cc", "/bin/false"])  # missing; fails
def test_helper_build_failure_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cc: str
) -> None:
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("PATH", "/nonexistent")  # no fallback compiler either
    with pytest.raises(ArkerError) as err:
        _native.helper_path(tmp_path)
    assert err.value.code == "unavailable"
    assert not list(tmp_path.glob("bin/*arkervm-*"))  # no half-built helper left


def test_tmp_is_a_share_of_the_memory_limit() -> None:
    from arker.engine.base import Limits
    from arker.engine.jail import tmp_bytes_for

    gib = Limits(memory_bytes=1 << 30)
    assert tmp_bytes_for(gib) == 256 << 20  # filling it leaves 3/4 for the VM's processes
    assert tmp_bytes_for(Limits(memory_bytes=4 << 30)) == 1 << 30
    assert tmp_bytes_for(gib, 64 << 20) == 64 << 20  # set by the engine's tmp_size_bytes
    assert tmp_bytes_for(gib, 8 << 30) == 1 << 30  # never past the memory limit
