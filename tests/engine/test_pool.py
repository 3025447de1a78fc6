"""The storage pool on real btrfs, real loop devices, as root."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_IMAGE_BYTES

from arker.engine import _btrfs
from arker.engine.pool import Pool
from arker.errors import ArkerError, ErrorCode

pytestmark = pytest.mark.root


def _mounted(path: Path) -> bool:
    want = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == want for line in f)


def _loops(image: Path) -> str:
    return subprocess.run(
        ["losetup", "-j", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()


def _make_golden(pool: Pool, name: str, files: dict[str, str]) -> None:
    staging = pool.new_golden(name)
    for rel, text in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_text(text)
    pool.seal_golden(staging, name, f"test golden {name}")


def test_image_is_sparse_found_again_and_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    image = data / "pool.img"
    p = Pool(data, image_size_bytes=TEST_IMAGE_BYTES)
    try:
        p.open()
        assert p.root == data / "pool" and _mounted(p.root)
        assert image.stat().st_size == TEST_IMAGE_BYTES
        assert image.stat().st_blocks * 512 < TEST_IMAGE_BYTES // 4  # sparse
        assert {"goldens", "vms", "checkpoints", "meta"} <= set(os.listdir(p.root))
        _make_golden(p, "g", {"hello": "world"})
        p.fork("g", "vm1")
        (p.vm_path("vm1") / "kept").write_text("still here")
    finally:
        p.close()
    p.close()  # idempotent
    assert not _mounted(data / "pool")
    assert _loops(image) == ""

    again = Pool(data, image_size_bytes=TEST_IMAGE_BYTES)
    try:
        again.open()
        assert (again.vm_path("vm1") / "kept").read_text() == "still here"
        assert [g.name for g in again.goldens()] == ["g"]
    finally:
        again.close()
    assert not _mounted(data / "pool") and _loops(image) == ""


def test_reopen_after_a_crash_adopts_the_mount(tmp_path: Path) -> None:
    data = tmp_path / "data"
    crashed = Pool(data, image_size_bytes=TEST_IMAGE_BYTES)
    p = Pool(data, image_size_bytes=TEST_IMAGE_BYTES)
    try:
        crashed.open()
        (crashed.root / "vms" / "marker").mkdir()
        # Die without closing: the mount and loop device stay, the lock goes.
        crashed.stop_flusher()
        assert crashed._root_fd is not None and crashed._lock_fd is not None
        os.close(crashed._root_fd)
        os.close(crashed._lock_fd)
        crashed._root_fd = crashed._lock_fd = crashed._loop = None
        p.open()
        assert (p.root / "vms" / "marker").is_dir()
    finally:
        p.close()
        _btrfs.LoopImage(data / "pool.img", data / "pool").detach()  # if p never adopted it
    assert not _mounted(data / "pool") and _loops(data / "pool.img") == ""


def test_a_second_pool_on_the_same_dir_is_refused(pool: Pool) -> None:
    other = Pool(pool.data_dir)
    with pytest.raises(ArkerError) as e:
        other.open()
    assert e.value.code == ErrorCode.UNAVAILABLE
    assert _mounted(pool.root)  # the refused one did not unmount ours


def test_a_data_dir_on_btrfs_is_used_directly(pool: Pool) -> None:
    inner = Pool(pool.root / "inner")
    try:
        inner.open()
        assert inner.root == pool.root / "inner"
        assert not (inner.root / "pool.img").exists()
        _make_golden(inner, "g", {"f": "1"})
        inner.fork("g", "v")
        assert (inner.vm_path("v") / "f").read_text() == "1"
    finally:
        inner.close()


def test_fork_of_golden_and_of_vm_copy_on_write(pool: Pool) -> None:
    _make_golden(pool, "g", {"etc/motd": "golden"})
    a = pool.fork("g", "a")
    assert (a / "etc/motd").read_text() == "golden"
    (a / "etc/motd").write_text("a1")
    (a / "only-a").write_text("a")
    b = pool.fork("a", "b")
    assert (b / "etc/motd").read_text() == "a1" and (b / "only-a").read_text() == "a"
    (a / "etc/motd").write_text("a2")  # after the fork: stays in a
    (b / "only-b").write_text("b")
    assert (b / "etc/motd").read_text() == "a1"
    assert not (a / "only-b").exists()
    assert (pool.golden_path("g") / "etc/motd").read_text() == "golden"
    assert pool.vm_ids() == ["a", "b"]


def test_golden_is_read_only(pool: Pool) -> None:
    _make_golden(pool, "g", {"f": "1"})
    with pytest.raises(OSError) as e:
        (pool.golden_path("g") / "f").write_text("changed")
    assert e.value.errno == errno.EROFS
    with _dir_fd(pool.golden_path("g")) as fd:
        assert _btrfs.is_readonly(fd)
    vm = pool.fork("g", "v")
    (vm / "f").write_text("writable")  # a fork of it is not


def test_fork_errors(pool: Pool) -> None:
    _make_golden(pool, "g", {})
    with pytest.raises(ArkerError) as e:
        pool.fork("nope", "v")
    assert e.value.code == ErrorCode.NOT_FOUND
    pool.fork("g", "v")
    with pytest.raises(ArkerError) as e:
        pool.fork("g", "v")
    assert e.value.code == ErrorCode.CONFLICT


@pytest.mark.parametrize("bad", ["", "..", ".", "../x", "a/b", ".hidden", "a b", "x" * 129, "é"])
def test_names_are_validated(pool: Pool, bad: str) -> None:
    _make_golden(pool, "g", {})
    for call in (
        lambda: pool.fork("g", bad),
        lambda: pool.fork(bad, "v"),
        lambda: pool.vm_path(bad),
        lambda: pool.new_golden(bad),
        lambda: pool.delete_vm(bad),
        lambda: pool.checkpoint("g", bad),
    ):
        with pytest.raises(ArkerError) as e:
            call()
        assert e.value.code == ErrorCode.INVALID_REQUEST
    assert pool.vm_ids() == []


def test_goldens_metadata_conflict_abandon_delete(pool: Pool) -> None:
    staging = pool.new_golden("g")
    assert staging.parent == pool.root / "goldens" and staging.name.startswith(".staging-g-")
    assert pool.goldens() == [] and not pool.has_golden("g")
    info = pool.seal_golden(staging, "g", "a description")
    assert pool.goldens() == [info] and pool.has_golden("g")
    assert (pool.root / "meta/goldens/g.json").is_file()
    assert os.listdir(pool.golden_path("g")) == []  # metadata is not in the rootfs
    second = pool.new_golden("g")
    with pytest.raises(ArkerError) as e:
        pool.seal_golden(second, "g", None)
    assert e.value.code == ErrorCode.CONFLICT
    pool.abandon_golden(second)
    pool.abandon_golden(second)  # missing is fine
    assert not second.exists()
    with pytest.raises(ArkerError):
        pool.abandon_golden(pool.golden_path("g"))  # only staging subvolumes
    pool.fork("g", "child")
    pool.delete_golden("g")
    assert pool.goldens() == [] and not (pool.root / "meta/goldens/g.json").exists()
    assert pool.vm_ids() == ["child"]  # forks outlive their golden


def test_checkpoint_list_restore_delete(pool: Pool) -> None:
    _make_golden(pool, "g", {})
    vm = pool.fork("g", "v")
    (vm / "f").write_text("one")
    pool.checkpoint("v", "c1")
    (vm / "f").write_text("two")
    (vm / "later").write_text("written after c1")
    pool.checkpoint("v", "c0")  # created second: order is by time, not name
    assert pool.checkpoints("v") == ["c1", "c0"]
    cp = pool.root / "checkpoints/v/c1"
    assert (cp / "f").read_text() == "one"
    with pytest.raises(OSError):
        (cp / "f").write_text("x")
    with pytest.raises(ArkerError) as e:
        pool.checkpoint("v", "c1")
    assert e.value.code == ErrorCode.CONFLICT

    pool.restore("v", "c1")
    assert (vm / "f").read_text() == "one"
    assert not (vm / "later").exists()
    (vm / "f").write_text("writable again")
    assert [n for n in os.listdir(pool.root / "vms") if n.startswith(".")] == []
    pool.restore("v", "c0")
    assert (vm / "later").exists()

    with pytest.raises(ArkerError) as e:
        pool.restore("v", "missing")
    assert e.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(ArkerError) as e:
        pool.checkpoint("nope", "c")
    assert e.value.code == ErrorCode.NOT_FOUND
    pool.delete_checkpoint("v", "c1")
    pool.delete_checkpoint("v", "c1")
    assert pool.checkpoints("v") == ["c0"]
    assert pool.checkpoints("never") == []


def test_delete_vm_frees_the_subvolume_and_its_checkpoints(pool: Pool) -> None:
    _make_golden(pool, "g", {})
    vm = pool.fork("g", "v")
    with _dir_fd(vm) as fd:
        _btrfs.create_subvolume(fd, "nested")  # a VM may make its own subvolumes
    (vm / "nested/data").write_text("x")
    pool.checkpoint("v", "c")
    pool.delete_vm("v")
    pool.delete_vm("v")  # missing is fine
    assert pool.vm_ids() == [] and not vm.exists()
    assert not (pool.root / "checkpoints/v").exists()
    listing = subprocess.run(
        ["btrfs", "subvolume", "list", str(pool.root)], capture_output=True, text=True, check=True
    ).stdout
    assert "vms/v" not in listing and "checkpoints/v" not in listing


def test_abandon_works_with_mounts_left_inside(pool: Pool) -> None:
    # What a killed mmdebstrap leaves: its /proc still mounted in the staging tree.
    staging = pool.new_golden("half")
    (staging / "proc").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(staging / "proc")], check=True)
    try:
        pool.abandon_golden(staging)
        assert not staging.exists()
    finally:
        if _mounted(staging / "proc"):
            subprocess.run(["umount", "-l", str(staging / "proc")], check=False)
    assert not _mounted(staging / "proc")


def test_restart_sweeps_half_done_work(tmp_path: Path) -> None:
    p = Pool(tmp_path / "data", image_size_bytes=TEST_IMAGE_BYTES)
    try:
        p.open()
        staging = p.new_golden("half")
        (staging / "f").write_text("x")
        p.close()
        p.open()
        assert not staging.exists()
    finally:
        p.close()


def test_sync_and_flusher(pool: Pool) -> None:
    assert pool._flusher is not None and pool._flusher.is_alive()
    pool.sync()
    pool.stop_flusher()
    assert pool._flusher is None
    pool.start_flusher(0.01)
    assert pool._flusher is not None


@contextlib.contextmanager
def _dir_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.mark.slow
def test_bench_fork_quick_prints_its_figures(tmp_path: Path) -> None:
    bench = Path(__file__).resolve().parents[2] / "bench" / "bench_fork.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--quick", "--iterations", "3", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    print(out)
    lines = [line for line in out.splitlines() if line.startswith("fork ")]
    assert len(lines) == 3  # header, 10 MB, the big one
    for line in lines[1:]:
        assert "median" in line and "p99" in line and "raw ioctl" in line and "fork/raw" in line
    assert "big/small" in out
    assert os.listdir(tmp_path) == []  # its pool is gone
