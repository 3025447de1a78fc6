"""NamespaceEngine end to end on a real btrfs pool with a busybox golden:
fork, run, files, checkpoints, delete, and a restart after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest_exec import engine, engine_dir, make_vm, run, vm  # noqa: F401

from arker.engine import jail
from arker.engine._cgroups import Cgroups
from arker.engine.base import RunPhase, RunSpec, VmPower
from arker.engine.host import NamespaceEngine
from arker.errors import ArkerError

pytestmark = pytest.mark.root


def test_lazy_start_stop_and_restart(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    assert engine.power(vm) is VmPower.STOPPED
    assert run(engine, vm, "echo hi > /home/user/kept").exit_code == 0
    assert engine.power(vm) is VmPower.RUNNING
    init = engine._init(vm)
    assert init is not None
    engine.stop(vm)
    assert engine.power(vm) is VmPower.STOPPED
    assert not init.alive()
    assert vm not in engine.cgroups.vm_ids()
    assert run(engine, vm, "cat /home/user/kept").stdout == b"hi\n"


def test_stop_fails_runs_in_flight(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    engine.start_run(vm, "long", RunSpec(command="echo begun; sleep 300"))
    try:
        while engine.run_info(vm, "long").stdout != b"begun\n":
            time.sleep(0.01)
        engine.stop(vm)
        info = engine.run_info(vm, "long")
        assert info.phase is RunPhase.FAILED and info.failure_reason == "the vm was stopped"
        assert info.stdout == b"begun\n"
    finally:
        engine.forget_run(vm, "long")


def test_open_twice_keeps_vms_running(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    run(engine, vm, "true")
    engine.open()
    assert engine.power(vm) is VmPower.RUNNING


def test_fork_a_running_vm(engine: NamespaceEngine, make_vm: Callable[..., str]) -> None:  # noqa: F811
    parent = make_vm()
    run(engine, parent, "echo one > f; sleep 300 > /dev/null 2>&1 &")
    child = make_vm(source=parent)
    run(engine, parent, "echo two > f")
    assert run(engine, child, "cat f").stdout == b"one\n"
    assert run(engine, parent, "cat f").stdout == b"two\n"
    # The child starts with files only: the parent's processes stay in the parent.
    assert run(engine, child, "ps -o args | grep 'sleep 300' | grep -v grep; true").stdout == b""


def test_files_round_trip_as_uid_1000(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = engine.write_file(vm, "/home/user/dir/a.txt", b"data\n")
    assert info.size == 5
    out = run(engine, vm, "cat dir/a.txt; stat -c %u:%g dir/a.txt; echo made > b.txt")
    assert out.stdout == b"data\n1000:1000\n"
    assert engine.read_file(vm, "/home/user/b.txt", 100) == b"made\n"


def test_checkpoint_and_restore(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    run(engine, vm, "echo v1 > f")
    engine.checkpoint(vm, "cp1")
    run(engine, vm, "echo v2 > f; sleep 300 > /dev/null 2>&1 &")
    assert engine.checkpoints(vm) == ["cp1"]
    engine.restore(vm, "cp1")
    assert engine.power(vm) is VmPower.STOPPED
    assert run(engine, vm, "cat f; ps -o args | grep 'sleep 300' | grep -v grep").stdout == b"v1\n"
    engine.delete_checkpoint(vm, "cp1")
    assert engine.checkpoints(vm) == []
    run(engine, vm, "true")
    with pytest.raises(ArkerError) as err:
        engine.restore(vm, "cp1")
    assert err.value.code == "not_found"
    assert engine.power(vm) is VmPower.RUNNING  # a failed restore stops nothing


def test_delete_leaves_nothing(engine: NamespaceEngine, make_vm: Callable[..., str]) -> None:  # noqa: F811
    vm_id = make_vm()
    run(engine, vm_id, "sleep 300 > /dev/null 2>&1 &")
    engine.start_run(vm_id, "inflight", RunSpec(command="sleep 300"))
    init = engine._init(vm_id)
    assert init is not None
    engine.delete(vm_id)
    assert not init.alive()
    assert vm_id not in engine.vm_ids() and vm_id not in engine.cgroups.vm_ids()
    assert not (engine.data_dir / "runs" / vm_id).exists()
    assert not (engine.state_dir / f"{vm_id}.json").exists()
    engine.delete(vm_id)  # deleting again is fine
    with pytest.raises(ArkerError) as err:
        engine.power(vm_id)
    assert err.value.code == "not_found"


def test_fork_errors(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    with pytest.raises(ArkerError) as err:
        engine.fork("no-such-golden", "x1", hostname="h")
    assert err.value.code == "not_found"
    with pytest.raises(ArkerError) as err:
        engine.fork("busybox", vm, hostname="h")
    assert err.value.code == "conflict"
    with pytest.raises(ArkerError) as err:
        engine.fork("busybox", "../x3", hostname="h")
    assert err.value.code == "invalid_request"


def test_free_text_name_makes_a_valid_hostname(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
) -> None:
    vm_id = make_vm(hostname="My VM_1 (test)!")
    assert run(engine, vm_id, "hostname").stdout == b"My-VM-1-test\n"


_CRASHY = """
import json, sys, time
sys.path.insert(0, {tests!r})
from conftest_exec import add_busybox_golden
from arker.engine.base import RunSpec
from arker.engine.host import NamespaceEngine
e = NamespaceEngine({data!r}, image_size_bytes=2 << 30)
e.open()
add_busybox_golden(e)
e.fork("busybox", "crashy", hostname="crashy")
e.start_run("crashy", "bg", RunSpec(command="setsid sleep 1000 > /dev/null 2>&1 &"))
e.wait_run("crashy", "bg")
e.start_run("crashy", "inflight", RunSpec(command="echo partial; sleep 1000"))
while e.run_info("crashy", "inflight").stdout != b"partial\\n":
    time.sleep(0.01)
print(json.dumps(e._init("crashy").pid), flush=True)
time.sleep(1000)
"""


def _vm_pids(cgroups: Cgroups, vm_id: str) -> list[int]:
    pids = []
    for procs in (cgroups.unified / vm_id).rglob("cgroup.procs"):
        pids += [int(p) for p in procs.read_text().split()]
    return pids


def test_restart_after_a_crash(tmp_path: Path) -> None:
    data = tmp_path / "crash"
    script = _CRASHY.format(tests=str(Path(__file__).parent), data=str(data))
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    new: NamespaceEngine | None = None
    try:
        line = server.stdout.readline() if server.stdout else b""
        assert line, "the crashing server did not start its VM"
        old_pids = _vm_pids(Cgroups(data), "crashy")
        assert json.loads(line) in old_pids and len(old_pids) >= 3  # init, bg, inflight
        server.send_signal(signal.SIGKILL)  # the crash
        server.wait()
        time.sleep(0.1)
        assert all(jail.proc_start_time(p) is not None for p in old_pids[:1])

        new = NamespaceEngine(data, image_size_bytes=2 << 30)
        new.open()
        for pid in old_pids:
            assert jail.proc_start_time(pid) is None, pid
        assert new.cgroups.vm_ids() == []
        assert new.power("crashy") is VmPower.STOPPED
        # Runs live in the engine that ran them: the server recovers its runs
        # from its own records (and a restart has killed every VM anyway).
        for run_id in ("inflight", "bg"):
            with pytest.raises(ArkerError) as err:
                new.run_info("crashy", run_id)
            assert err.value.code == "not_found"
        after = run(new, "crashy", "hostname; ps -o args | grep -c '^sleep'")
        assert after.stdout == b"crashy\n0\n"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if new is None:  # open failed: still clean what the crashed server left
            new = NamespaceEngine(data, image_size_bytes=2 << 30)
            new.open()
        for vm_id in new.vm_ids():
            new.delete(vm_id)
        new.close()
        assert not Cgroups(data).vm_ids()
        assert str(data) not in Path("/proc/self/mounts").read_text()
        os.sync()


def test_bench_quick_prints_its_figures() -> None:
    bench = Path(__file__).parents[2] / "bench" / "bench_engine.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    for figure in (
        "floor subprocess.run(true) ms:",
        "run true round trip ms:",
        "run true / floor ratio:",
        "vm start from stopped ms:",
        "idle memory per vm (cgroup) KiB:",
        "idle memory per vm (MemAvailable delta) KiB:",
        "fork    10 MB: median",  # the fork series runs in the same command
        "raw ioctl: median",
        "big/small: fork",
    ):
        assert figure in done.stdout, (figure, done.stdout)


def test_close_releases_waiting_threads(tmp_path: Path) -> None:
    eng = NamespaceEngine(tmp_path / "data", image_size_bytes=2 << 30)
    eng.open()
    try:
        eng.build_golden("busybox")
        eng.fork("busybox", "waited", hostname="waited")
        eng.start_run("waited", "long", RunSpec(command="sleep 300"))
        with ThreadPoolExecutor(1) as pool:
            waiter = pool.submit(eng.wait_run, "waited", "long", None)
            time.sleep(0.2)
            assert not waiter.done()
            init = eng._init("waited")
            eng.close()
            info = waiter.result(timeout=10)
        assert info.phase is RunPhase.FAILED and info.failure_reason == "the vm was stopped"
        assert init is not None and not init.alive()
        assert Cgroups(tmp_path / "data").vm_ids() == []
    finally:
        eng.open()  # idempotent if close failed half-way; then remove what was made
        for vm_id in eng.vm_ids():
            eng.delete(vm_id)
        eng.close()
