"""A VM's size, on the real engine: its cgroup limits (CFS quota, a cpuset of
whole CPUs spread over the host, memory, pids) and what it sees of them from
inside through the engine's lxcfs (engine/lxcfs.py), which is supervised: if
it dies, VMs keep running and it comes back. The server side (asking,
inheriting, maxima) is tests/server/test_fork_sizes.py; the debian golden's
`free`, `nproc` and python3 are in tests/e2e/test_vm_sizes.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest_exec import add_busybox_golden, engine, engine_dir, make_vm, run  # noqa: F401

from arker.engine.base import Limits, RunPhase
from arker.engine.host import NamespaceEngine

pytestmark = pytest.mark.root

MiB = 2**20
# Read with read(2), as glibc, coreutils and Python do. Busybox `cat` uses
# sendfile, which on this kernel can answer from the page cache of lxcfs's
# shared inode: what another VM read last (see the README's sizes section).
READ = "dd if={} bs=64k 2>/dev/null"


def out(eng: NamespaceEngine, vm_id: str, command: str, user: str = "root") -> str:
    info = run(eng, vm_id, command, user=user)
    assert info.exit_code == 0, (info.stdout, info.stderr)
    return info.stdout.decode()


def meminfo_kib(text: str, field: str = "MemTotal") -> int:
    line = next(x for x in text.splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def processors(cpuinfo: str) -> int:
    return sum(1 for line in cpuinfo.splitlines() if line.startswith("processor"))


def test_the_engine_runs_lxcfs(engine: NamespaceEngine) -> None:  # noqa: F811
    # CI installs lxcfs (scripts/install): the rest of this file must run, not skip.
    assert engine.lxcfs is not None and engine.lxcfs.alive()


def test_a_vm_of_1_cpu_and_512_mib_sees_that_size(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
) -> None:
    vm = make_vm(limits=Limits(cpu_cores=1, memory_bytes=512 * MiB))
    for user in ("root", "user"):
        assert out(engine, vm, "nproc", user).strip() == "1"
        assert processors(out(engine, vm, READ.format("/proc/cpuinfo"), user)) == 1
        stat = out(engine, vm, READ.format("/proc/stat"), user).splitlines()
        assert [x.split()[0] for x in stat if x.startswith("cpu")] == ["cpu", "cpu0"]
        assert meminfo_kib(out(engine, vm, READ.format("/proc/meminfo"), user)) == 512 * 1024
        assert meminfo_kib(out(engine, vm, READ.format("/proc/meminfo"), user), "SwapTotal") == 0
    # The host's side: the limits are real, not only shown.
    cg = engine.cgroups
    assert (cg.limit_roots["cpu"] / vm / "cpu.cfs_quota_us").read_text().strip() == "100000"
    assert int((cg.limit_roots["memory"] / vm / "memory.limit_in_bytes").read_text()) == 512 * MiB
    cpus = (cg.limit_roots["cpuset"] / vm / "cpuset.cpus").read_text().strip()
    assert cpus.isdigit() and cg.cpus(vm) == [int(cpus)]
    # /proc/uptime is the VM's own: it started moments ago, unlike the host.
    vm_up = float(out(engine, vm, READ.format("/proc/uptime")).split()[0])
    host_up = float(Path("/proc/uptime").read_text().split()[0])
    assert vm_up < host_up


def test_sys_is_read_only_and_its_cgroups_are_the_vms_own(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
) -> None:
    vm = make_vm(limits=Limits(cpu_cores=1, memory_bytes=512 * MiB, pids_max=200))
    out(engine, vm, "true")  # started: its cpuset is picked
    cg = engine.cgroups
    if cg.v2:
        limits = {"memory.max": str(512 * MiB), "cpu.max": "100000 100000", "pids.max": "200"}
    else:
        limits = {
            "memory/memory.limit_in_bytes": str(512 * MiB),
            "cpu/cpu.cfs_quota_us": "100000",
            "pids/pids.max": "200",
            "cpuset/cpuset.cpus": ",".join(map(str, cg.cpus(vm) or ["?"])),
        }
    for user in ("root", "user"):
        for name, want in limits.items():
            assert out(engine, vm, f"cat /sys/fs/cgroup/{name}", user).strip() == want, name
    # The VM's own cgroup, not the engine's root with every VM in it.
    listing = out(engine, vm, "ls /sys/fs/cgroup/memory" if not cg.v2 else "ls /sys/fs/cgroup")
    assert not any(name.startswith("vm-") for name in listing.split())
    # glibc's get_nprocs (os.cpu_count) reads this: lxcfs's, 1 CPU.
    assert out(engine, vm, "cat /sys/devices/system/cpu/online").strip() in ("0", "1")
    # Read-only, all of it, for root too; the net entries are the VM's own.
    cgroup_file = next(iter(limits))
    for path in (f"/sys/fs/cgroup/{cgroup_file}", "/sys/fs/cgroup/new", "/sys/kernel/new"):
        info = run(engine, vm, f"echo 1 > {path}", user="root")
        assert info.exit_code != 0 and b"Read-only file system" in info.stderr, path
    assert out(engine, vm, "ls /sys/class/net").split() == ["lo"]
    assert out(engine, vm, "ls -A /sys/firmware") == ""  # masked
    assert cg.memory_limit(vm) == 512 * MiB  # still as the host set it


def test_whole_cpus_are_spread_over_the_host(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
) -> None:
    host = os.cpu_count() or 1
    assert host >= 2, "CI has 2 cores: spreading needs at least 2"
    a = make_vm(limits=Limits(cpu_cores=1))
    b = make_vm(limits=Limits(cpu_cores=1))
    out(engine, a, "true")
    out(engine, b, "true")
    ca, cb = engine.cgroups.cpus(a), engine.cgroups.cpus(b)
    assert ca is not None and cb is not None and len(ca) == len(cb) == 1
    assert ca != cb  # the second lands on the CPU the first does not hold
    # A VM of 2 CPUs gets 2, and sees 2; half a CPU is one CPU's cpuset.
    two = make_vm(limits=Limits(cpu_cores=2))
    assert out(engine, two, "nproc").strip() == "2"
    assert processors(out(engine, two, READ.format("/proc/cpuinfo"))) == 2
    half = make_vm(limits=Limits(cpu_cores=0.5))
    assert out(engine, half, "nproc").strip() == "1"
    quota = engine.cgroups.limit_roots["cpu"] / half / "cpu.cfs_quota_us"
    assert quota.read_text().strip() == "50000"
    # Stopped, a VM gives its CPUs back.
    engine.stop(a)
    assert engine.cgroups.cpus(a) is None


def test_an_oom_kill_names_the_memory_limit(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
) -> None:
    vm = make_vm(limits=Limits(memory_bytes=128 * MiB))
    info = run(engine, vm, "dd if=/dev/zero of=/dev/null bs=300M count=1")
    assert info.exit_code == 137 and info.oom_killed, info
    codes = dict(info.warnings)
    assert "the vm's memory limit of 128 MiB" in codes["oom_killed"], info.warnings
    fine = run(engine, vm, "echo fine")
    assert fine.stdout == b"fine\n" and not fine.oom_killed and not fine.warnings


@pytest.fixture
def own_engine(tmp_path: Path) -> Iterator[NamespaceEngine]:
    """An engine of this test's own: killing its lxcfs touches no other test's VMs."""
    eng = NamespaceEngine(
        tmp_path / "data", image_size_bytes=2 << 30, tmp_size_bytes=32 << 20, networking=False
    )
    eng.open()
    try:
        add_busybox_golden(eng)
        yield eng
    finally:
        for vm_id in eng.vm_ids():
            eng.delete(vm_id)
        eng.close()


def _until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return check()


def test_vms_keep_running_when_lxcfs_dies_and_it_comes_back(
    own_engine: NamespaceEngine,
) -> None:
    eng = own_engine
    lx = eng.lxcfs
    assert lx is not None and lx.alive()
    before = "vm-before"
    eng.fork("busybox", before, hostname="before", limits=Limits(memory_bytes=256 * MiB))
    assert meminfo_kib(out(eng, before, READ.format("/proc/meminfo"))) == 256 * 1024
    pid = lx.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # only the daemon this engine started
    assert _until(lambda: not lx.alive(), 5)
    # The VM runs on; its lxcfs files fail (ENOTCONN), the rest of it works.
    still = run(eng, before, "echo alive; " + READ.format("/proc/meminfo"))
    assert still.phase is RunPhase.COMPLETED and still.stdout.startswith(b"alive\n")
    # A VM started while it is down starts, with the host's figures.
    eng.fork("busybox", "vm-during", hostname="during", limits=Limits(memory_bytes=256 * MiB))
    assert out(eng, "vm-during", "echo up") == "up\n"
    # The supervisor starts it again (after a pause), and VMs started then see their size.
    assert _until(lx.alive, 15), "lxcfs was not started again"
    assert lx.pid != pid and lx.restarts == 1
    eng.fork("busybox", "vm-after", hostname="after", limits=Limits(memory_bytes=384 * MiB))
    assert meminfo_kib(out(eng, "vm-after", READ.format("/proc/meminfo"))) == 384 * 1024
    # And the VMs that ran through it get the new daemon's files (the watcher
    # gives them once it is back): their size again.
    read = READ.format("/proc/meminfo") + " | grep MemTotal"
    for vm in (before, "vm-during"):
        assert _until(lambda vm=vm: run(eng, vm, read).stdout.split()[1:2] == [b"262144"], 10)


def test_closing_the_engine_ends_its_lxcfs_and_its_mount(tmp_path: Path) -> None:
    eng = NamespaceEngine(tmp_path / "data", image_size_bytes=2 << 30, networking=False)
    eng.open()
    try:
        assert eng.lxcfs is not None and eng.lxcfs.alive()
        pid, mount = eng.lxcfs.pid, str(eng.lxcfs.mount)
        assert pid is not None
    finally:
        eng.close()
    assert (
        not Path(f"/proc/{pid}").exists()
        or b"lxcfs" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    assert mount not in Path("/proc/self/mountinfo").read_text()


def test_a_killed_engines_lxcfs_ends_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_ENGINE, str(data)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline())
        mount = str(data / "lxcfs" / "mnt")
        assert mount in Path("/proc/self/mountinfo").read_text()
        child.kill()  # SIGKILL: no close(), no cleanup of its own
        child.wait()
        assert _until(lambda: not Path(f"/proc/{pid}").exists(), 10), "lxcfs outlived its engine"
        assert _until(lambda: mount not in Path("/proc/self/mountinfo").read_text(), 10)
    finally:
        child.kill()
        child.wait()
        # What the killed engine left (its pool, cgroups) goes as a restart's would.
        eng = NamespaceEngine(data, image_size_bytes=2 << 30, networking=False)
        eng.open()
        eng.close()


KILLED_ENGINE = """
import sys, time
from arker.engine.host import NamespaceEngine
eng = NamespaceEngine(sys.argv[1], image_size_bytes=2 << 30, networking=False)
eng.open()
print(eng.lxcfs.pid, flush=True)
time.sleep(120)
"""
