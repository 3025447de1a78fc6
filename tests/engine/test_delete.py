"""Deleting a VM frees its storage whatever its root built inside: nested
subvolumes at any depth, directories deeper than PATH_MAX, read-only
snapshots, immutable and append-only flags. The shapes are made from the
test process (VMs cannot make subvolumes), then the VM is deleted and the
pool checked: no subvolume left, the space back once the cleaner ran."""

from __future__ import annotations

import os
import subprocess

from arker.engine import _btrfs
from arker.engine.pool import Pool

MiB = 2**20
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _subvolumes(pool: Pool) -> list[str]:
    out = subprocess.run(
        ["btrfs", "subvolume", "list", str(pool.root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line]


def _qgroups(pool: Pool) -> int:
    fd = os.open(pool.root, _O_DIR)
    try:
        qgroups = f"/sys/fs/btrfs/{_btrfs.fsid(fd)}/qgroups"
    finally:
        os.close(fd)
    return sum(n.startswith("0_") for n in os.listdir(qgroups))


def _used(pool: Pool) -> int:
    pool.sync()
    subprocess.run(["btrfs", "subvolume", "sync", str(pool.root)], check=True)
    pool.sync()
    st = os.statvfs(pool.root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _write(dir_fd: int, name: str, mib: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        for _ in range(mib):
            os.write(fd, os.urandom(MiB))
    finally:
        os.close(fd)


def _chattr(fd: int, flags: int) -> None:
    import fcntl
    import struct

    fcntl.ioctl(fd, _btrfs._FS_IOC_SETFLAGS, bytearray(struct.pack("=q", flags)), True)


def _deep(fd: int, levels: int) -> int:
    """Descend `levels` directories of 200-char names below `fd` (by openat);
    return the fd of the deepest. The path is far past PATH_MAX (4096)."""
    cur = os.dup(fd)
    for _ in range(levels):
        os.mkdir("d" * 200, dir_fd=cur)
        nxt = os.open("d" * 200, _O_DIR, dir_fd=cur)
        os.close(cur)
        cur = nxt
    return cur


def test_delete_frees_every_nasty_shape(pool: Pool, busybox_golden: str) -> None:
    before_subvols = _subvolumes(pool)
    before_qgroups = _qgroups(pool)
    before = _used(pool)
    pool.fork(busybox_golden, "vm")
    root = os.open(pool.vm_path("vm"), _O_DIR)
    try:
        # Nested subvolumes three deep, each holding data.
        _btrfs.create_subvolume(root, "a")
        a = os.open("a", _O_DIR, dir_fd=root)
        _write(a, "data", 8)
        _btrfs.create_subvolume(a, "b")
        b = os.open("b", _O_DIR, dir_fd=a)
        _btrfs.create_subvolume(b, "c")
        c = os.open("c", _O_DIR, dir_fd=b)
        _write(c, "data", 8)
        # A read-only snapshot of a nested subvolume, inside a read-only one.
        _btrfs.snapshot(c, b, "c-ro", readonly=True)
        _btrfs.set_readonly(b, True)
        for fd in (a, b, c):
            os.close(fd)
        # A subvolume at the bottom of a tree deeper than PATH_MAX (30 x 201 bytes).
        bottom = _deep(root, 30)
        _btrfs.create_subvolume(bottom, "deep")
        deep = os.open("deep", _O_DIR, dir_fd=bottom)
        _write(deep, "data", 8)
        os.close(deep)
        os.close(bottom)
        # An immutable directory holding a subvolume, and an append-only one.
        os.mkdir("locked", dir_fd=root)
        locked = os.open("locked", _O_DIR, dir_fd=root)
        _btrfs.create_subvolume(locked, "inner")
        inner = os.open("inner", _O_DIR, dir_fd=locked)
        _write(inner, "data", 8)
        _chattr(inner, 0x20)  # append-only root of the nested subvolume
        os.close(inner)
        _chattr(locked, 0x10)  # immutable
        os.close(locked)
        _write(root, "plain", 8)
    finally:
        os.close(root)
    # btrfs-progs cannot list paths past PATH_MAX; every subvolume has a qgroup.
    assert _qgroups(pool) == before_qgroups + 7
    assert _used(pool) > before + 30 * MiB

    pool.delete_vm("vm")

    assert _subvolumes(pool) == before_subvols
    assert not pool.vm_path("vm").exists()
    assert _used(pool) < before + 4 * MiB  # waits for the cleaner
    assert pool.drop_stale_qgroups() == 0
    assert _qgroups(pool) == before_qgroups  # none lingers


def test_a_delete_that_fails_is_pending_and_retried(
    pool: Pool, busybox_golden: str, monkeypatch: object
) -> None:
    import pytest

    mp: pytest.MonkeyPatch = monkeypatch  # type: ignore[assignment]
    pool.fork(busybox_golden, "stuck")
    real = _btrfs.destroy_subvolume

    def refuse(parent_fd: int, name: str) -> None:
        raise OSError(5, "injected I/O error")

    mp.setattr(_btrfs, "destroy_subvolume", refuse)
    pool.delete_vm("stuck")
    # Gone for everyone at once (the id is free), its storage still pending.
    assert "stuck" not in pool.vm_ids() and not pool.vm_path("stuck").exists()
    assert pool.delete_pending() == 1
    assert pool.retry_deletes() == 1
    mp.setattr(_btrfs, "destroy_subvolume", real)
    assert pool.retry_deletes() == 0
    assert not any(n.startswith(".deleted-") for n in os.listdir(pool.root / "vms"))
