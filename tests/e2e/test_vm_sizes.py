"""VMs sized on request, and they see their own size: a real `arker serve`
on the real engine with the debian golden (its coreutils, procps and
python3 are what programs size themselves with), asked through the SDK and
the CLI. The engine's own checks are tests/engine/test_sizes.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live import Live, _arker_cmd, make_live, stop_live

from arker import Arker, ArkerError, Computer

pytestmark = pytest.mark.root

MAX_FLAGS = ("--vm-max-cpu", "2", "--vm-max-memory-mib", "2048", "--vm-max-pids", "4096")


@pytest.fixture(scope="module")
def sized_live() -> Iterator[Live]:
    server = make_live(None, *MAX_FLAGS, goldens=("debian",))
    try:
        yield server
    finally:
        stop_live(server)


@pytest.fixture
def arker(sized_live: Live) -> Iterator[Arker]:
    with sized_live.client() as client:
        yield client


def sh(vm: Computer, command: str, user: str | None = None) -> str:
    result = vm.run(command, **({"user": user} if user else {}))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout.decode()


def health(live: Live) -> dict[str, object]:
    r = httpx.get(f"{live.url}/healthz", timeout=10)
    assert r.status_code == 200, r.text
    doc: dict[str, object] = r.json()
    return doc


def test_a_vm_forked_with_1_cpu_and_512_mib_sees_that_size(arker: Arker) -> None:
    with arker.vm("debian").fork(cpu=1, memory_mib=512) as vm:
        assert vm.info is not None
        res = vm.info.resources
        assert res is not None and (res.cpu, res.memory_mib) == (1, 512)
        for user in ("root", "user"):
            assert sh(vm, "nproc", user).strip() == "1"
            assert sh(vm, "python3 -c 'import os; print(os.cpu_count())'", user).strip() == "1"
            assert sh(vm, "grep -c ^processor /proc/cpuinfo", user).strip() == "1"
            free = sh(vm, "free -m", user).splitlines()
            mem = next(line for line in free if line.startswith("Mem:")).split()
            assert mem[1] == "512", free
            total = sh(vm, "grep ^MemTotal: /proc/meminfo", user).split()
            assert total[1:] == ["524288", "kB"]
            limit = sh(vm, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes", user)
            assert int(limit) == 512 * 2**20
        # Up to the server's maximum, and a child inherits what it does not ask.
        with vm.fork(memory_mib=2048) as child:
            assert child.info is not None and child.info.resources is not None
            assert (child.info.resources.cpu, child.info.resources.memory_mib) == (1, 2048)
            assert sh(child, "nproc").strip() == "1"
            assert sh(child, "grep ^MemTotal: /proc/meminfo").split()[1] == str(2048 * 1024)


def test_an_unsized_vm_gets_the_defaults_and_two_cpus_are_two(arker: Arker) -> None:
    with arker.vm("debian").fork() as plain, arker.vm("debian").fork(cpu=2) as two:
        assert plain.info is not None and plain.info.resources is not None
        assert plain.info.resources.memory_mib == 1024
        assert sh(plain, "grep ^MemTotal: /proc/meminfo").split()[1] == str(1024 * 1024)
        assert sh(two, "nproc").strip() == "2"
        assert sh(two, "python3 -c 'import os; print(os.cpu_count())'").strip() == "2"


def test_asks_above_the_servers_maxima_are_refused_and_make_nothing(arker: Arker) -> None:
    before = arker.list().total
    for asked, field, top in (
        ({"cpu": 3}, "resources.cpu", "2"),
        ({"memory_mib": 4096}, "resources.memory_mib", "2048"),
        ({"pids": 5000}, "resources.pids", "4096"),
    ):
        with pytest.raises(ArkerError) as caught:
            arker.vm("debian").fork(resources=asked)
        err = caught.value
        assert err.code == "invalid_request" and err.status == 400
        assert field in err.message and top in err.message
    assert arker.list().total == before


def test_an_oom_kill_says_so_and_names_the_limit(arker: Arker) -> None:
    with arker.vm("debian").fork(memory_mib=256) as vm:
        result = vm.run("python3 -c 'x = bytearray(600 * 2**20)'")
        assert result.exit_code == 137 and result.oom_killed
        messages = [w.message for w in result.warnings if w.code == "oom_killed"]
        assert messages and "memory limit of 256 MiB" in messages[0], result.warnings
        assert sh(vm, "echo fine").strip() == "fine"


def test_the_cli_forks_a_sized_vm(sized_live: Live, arker: Arker) -> None:
    env = {**os.environ, "ARKER_API_KEY": sized_live.keys["acme"], "ARKER_BASE_URL": sized_live.url}
    proc = subprocess.run(
        [*_arker_cmd(), "fork", "debian", "--cpu", "2", "--memory", "768", "--pids", "300"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    vm_id = proc.stdout.strip().splitlines()[-1]
    vm = arker.vm(vm_id)
    try:
        info = vm.get()
        assert info.resources is not None
        assert (info.resources.cpu, info.resources.memory_mib, info.resources.pids) == (2, 768, 300)
        assert sh(vm, "nproc").strip() == "2"
    finally:
        vm.delete()


def test_vms_keep_running_when_lxcfs_dies_and_health_says_so(
    sized_live: Live, arker: Arker
) -> None:
    assert health(sized_live).get("lxcfs") == "running"
    pidfile = Path(sized_live.server.data_dir) / "lxcfs" / "pid"
    pid = int(pidfile.read_text())
    with open(f"/proc/{pid}/cmdline", "rb") as f:  # the daemon this server started
        assert str(pidfile.parent / "mnt").encode() in f.read()
    with arker.vm("debian").fork(memory_mib=512) as vm:
        assert sh(vm, "echo up").strip() == "up"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while health(sized_live).get("lxcfs") != "down":
            assert time.monotonic() < deadline, "health never said lxcfs was down"
            time.sleep(0.01)
        assert sh(vm, "echo still up").strip() == "still up"  # the VM runs on
        deadline = time.monotonic() + 30
        while health(sized_live).get("lxcfs") != "running":
            assert time.monotonic() < deadline, "lxcfs was not started again"
            time.sleep(0.05)
        assert int(pidfile.read_text()) != pid
        # The VM that ran through it is given the new daemon's files: its size again.
        deadline = time.monotonic() + 10
        while vm.run("grep ^MemTotal: /proc/meminfo").stdout.split()[1:2] != [b"524288"]:
            assert time.monotonic() < deadline, "the running vm was not re-attached"
            time.sleep(0.05)
    with arker.vm("debian").fork(memory_mib=640) as fresh:
        assert sh(fresh, "grep ^MemTotal: /proc/meminfo").split()[1] == str(640 * 1024)
