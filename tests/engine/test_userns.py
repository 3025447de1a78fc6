"""Each VM in a user namespace of its own (native/userns.c, engine/userns.py):
root in a VM is, on the host, an unprivileged uid of the VM's own range; its
files keep, on disk, the ids the VM sees; forks share them unchanged."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from conftest_exec import add_busybox_golden, engine, engine_dir, make_vm, run  # noqa: F401

from arker.engine.base import RunPhase, RunSpec
from arker.engine.host import NamespaceEngine
from arker.engine.userns import CLAIM_DIR, FIRST_ID, RANGE, IdRanges

pytestmark = pytest.mark.root


def out(eng: NamespaceEngine, vm_id: str, command: str, user: str = "root") -> str:
    info = run(eng, vm_id, command, user=user)
    assert info.exit_code == 0, (info.stdout, info.stderr)
    return info.stdout.decode()


def base_of(eng: NamespaceEngine, vm_id: str) -> int:
    base = eng.id_base(vm_id)
    assert base is not None
    return base


def test_this_host_idmaps(engine: NamespaceEngine) -> None:  # noqa: F811
    # CI's kernel (6.x) idmaps btrfs: the rest of this file must run, not skip.
    assert engine.userns


def test_uid_map_is_the_vms_own_range(engine: NamespaceEngine, make_vm) -> None:  # noqa: F811
    vm = make_vm()
    base = base_of(engine, vm)
    assert base >= FIRST_ID and (base - FIRST_ID) % RANGE == 0
    for path in ("/proc/self/uid_map", "/proc/self/gid_map"):
        assert out(engine, vm, f"cat {path}").split() == ["0", str(base), str(RANGE)]
    assert out(engine, vm, "id -u").strip() == "0"


def test_root_in_a_vm_is_its_mapped_uid_on_the_host(
    engine: NamespaceEngine,  # noqa: F811
    make_vm,  # noqa: F811
) -> None:
    vm = make_vm()
    base = base_of(engine, vm)
    run_id = uuid.uuid4().hex[:12]
    engine.start_run(vm, run_id, RunSpec(command="exec sleep 30", user="root"))
    try:
        procs = engine.cgroups.unified / vm / f"r-{run_id}" / "cgroup.procs"
        deadline = time.monotonic() + 5
        while not procs.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.01)
        pid = procs.read_text().split()[0]
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        uid = next(line for line in status if line.startswith("Uid:")).split()[1:]
        gid = next(line for line in status if line.startswith("Gid:")).split()[1:]
        assert uid == [str(base)] * 4 and gid == [str(base)] * 4
        init = Path(f"/proc/{engine._init(vm).pid}/status").read_text()  # type: ignore[union-attr]
        assert f"Uid:\t{base}\t" in init  # PID 1 too
    finally:
        engine.cancel_run(vm, run_id)
        engine.forget_run(vm, run_id)


def test_files_are_stored_with_the_owners_the_vm_sees(
    engine: NamespaceEngine,  # noqa: F811
    make_vm,  # noqa: F811
) -> None:
    vm = make_vm()
    out(engine, vm, "echo r > /root/by-root && mkdir /srv && chown 123:456 /srv")
    out(engine, vm, "echo u > /home/user/by-user", user="user")
    root = engine.pool.vm_path(vm)
    for path, owner in (("root/by-root", 0), ("srv", 123), ("home/user/by-user", 1000)):
        st = os.stat(root / path)
        assert (st.st_uid, st.st_gid) == (owner, 456 if owner == 123 else owner), path
    # The files API writes on the host side: uid 1000 on disk is user inside.
    engine.write_file(vm, "/home/user/from-api", b"x")
    assert os.stat(root / "home/user/from-api").st_uid == 1000
    assert out(engine, vm, "stat -c '%u %g' /home/user/from-api").split() == ["1000", "1000"]


def test_two_vms_get_disjoint_ranges(engine: NamespaceEngine, make_vm) -> None:  # noqa: F811
    a, b = make_vm(), make_vm()
    ba, bb = base_of(engine, a), base_of(engine, b)
    assert abs(ba - bb) >= RANGE
    assert out(engine, a, "cat /proc/self/uid_map").split()[1] == str(ba)
    assert out(engine, b, "cat /proc/self/uid_map").split()[1] == str(bb)


def test_a_fork_shows_the_same_owners(engine: NamespaceEngine, make_vm) -> None:  # noqa: F811
    parent = make_vm()
    out(engine, parent, "echo r > /root/r && mkdir -p /data && chown 1000:1000 /data")
    out(engine, parent, "echo u > /home/user/u && echo d > /data/d", user="user")
    child = "vm-" + uuid.uuid4().hex[:10]
    engine.fork(parent, child, hostname="child")
    try:
        assert base_of(engine, child) != base_of(engine, parent)
        got = out(engine, child, "stat -c '%n %u %g' /root/r /home/user/u /data /data/d")
        assert got.split("\n")[:4] == [
            "/root/r 0 0",
            "/home/user/u 1000 1000",
            "/data 1000 1000",
            "/data/d 1000 1000",
        ]
        assert out(engine, child, "cat /data/d", user="user") == "d\n"
    finally:
        engine.delete(child)


def test_a_range_is_the_vms_until_it_is_deleted(
    engine: NamespaceEngine,  # noqa: F811
    make_vm,  # noqa: F811
) -> None:
    vm = make_vm()
    base = base_of(engine, vm)
    claim = CLAIM_DIR / str(base)
    state = engine.state_dir / f"{vm}.json"
    assert json.loads(state.read_text())["id_base"] == base  # a restart finds it here
    assert claim.read_text() == str(state.absolute())
    engine.stop(vm)
    out(engine, vm, "true")  # started again: the same range
    assert base_of(engine, vm) == base
    engine.delete(vm)
    assert not claim.exists()


def test_ranges_are_reused_only_after_delete(tmp_path: Path) -> None:
    ids = IdRanges(tmp_path / "ids")
    owners = [tmp_path / f"vm{i}.json" for i in range(3)]
    for owner in owners:
        owner.write_text("{}")
    a, b = ids.claim(owners[0]), ids.claim(owners[1])
    assert (a, b) == (FIRST_ID, FIRST_ID + RANGE)
    assert ids.claim(owners[0], want=a) == a  # its own, again
    assert ids.claim(owners[2], want=a) == FIRST_ID + 2 * RANGE  # not another's
    ids.release(a, owners[2])  # not its holder: nothing freed
    assert IdRanges(tmp_path / "ids").claim(tmp_path / "new.json") == FIRST_ID + 3 * RANGE
    ids.release(a, owners[0])
    assert ids.claim(tmp_path / "later.json") == a


def test_a_stale_claim_is_taken_again(tmp_path: Path) -> None:
    ids = IdRanges(tmp_path / "ids")
    gone = tmp_path / "gone.json"
    gone.write_text("{}")
    a = ids.claim(gone)
    gone.unlink()  # its data dir was removed with its VMs
    old = time.time() - 3600
    os.utime(tmp_path / "ids" / str(a), (old, old))
    assert IdRanges(tmp_path / "ids").claim(tmp_path / "vm.json") == a


def test_nested_user_namespaces_stay_denied(engine: NamespaceEngine, make_vm) -> None:  # noqa: F811
    vm = make_vm()
    for user in ("root", "user"):
        for cmd in ("unshare -U true", "unshare -m true", "unshare -n true"):
            info = run(engine, vm, cmd, user=user)
            assert info.exit_code != 0, (user, cmd)
    # A second lock under seccomp's: the VM's namespace may hold no more.
    assert out(engine, vm, "cat /proc/sys/user/max_user_namespaces").strip() == "0"
    info = run(engine, vm, "echo 5 > /proc/sys/user/max_user_namespaces", user="root")
    assert info.exit_code != 0


def test_root_in_a_vm_can_chown_bind_80_and_write_etc(
    engine: NamespaceEngine,  # noqa: F811
    make_vm,  # noqa: F811
) -> None:
    vm = make_vm()
    got = out(
        engine,
        vm,
        "echo x > /etc/motd && chown 1000:1000 /etc/motd && stat -c '%u' /etc/motd"
        " && httpd -p 127.0.0.1:80 -h /tmp && echo bound"
        " && cat /dev/null && head -c 4 /dev/urandom | wc -c",
    )
    assert got.split() == ["1000", "bound", "4"]
    assert os.stat(engine.pool.vm_path(vm) / "etc/motd").st_uid == 1000
    info = run(engine, vm, "httpd -p 127.0.0.1:81 -h /tmp", user="user")
    assert info.exit_code != 0  # uid 1000 still may not


def test_the_range_survives_a_restart_and_userns_can_be_off(tmp_path: Path) -> None:
    data = tmp_path / "data"
    eng = NamespaceEngine(data, image_size_bytes=2 << 30, networking=False)
    eng.open()
    try:
        add_busybox_golden(eng)
        eng.fork("busybox", "vm-r", hostname="r")
        base = base_of(eng, "vm-r")
        out(eng, "vm-r", "echo r > /root/r")
    finally:
        eng.close()
    again = NamespaceEngine(data, image_size_bytes=2 << 30, networking=False)
    again.open()
    try:
        assert out(again, "vm-r", "cat /proc/self/uid_map").split()[1] == str(base)
    finally:
        again.close()
    off = NamespaceEngine(data, image_size_bytes=2 << 30, networking=False, user_namespaces=False)
    off.open()
    try:
        assert not off.userns and off.id_base("vm-r") is None
        assert out(off, "vm-r", "cat /proc/self/uid_map").split() == ["0", "0", "4294967295"]
        assert out(off, "vm-r", "stat -c %u /root/r").strip() == "0"  # same files, same owners
        info = run(off, "vm-r", "true")
        assert info.phase == RunPhase.COMPLETED
        off.delete("vm-r")
        assert not (CLAIM_DIR / str(base)).exists()
    finally:
        off.close()
