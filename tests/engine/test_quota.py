"""Per-VM disk quotas (btrfs simple quotas) and the pool's free-space reserve."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from arker.engine.pool import Pool
from arker.errors import ArkerError, ErrorCode

MiB = 2**20


def _fill(path: Path, mib: int) -> int:
    """Write up to `mib` MiB to `path`, syncing; the errno that stopped it, or 0."""
    try:
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MiB))
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_quotas_on_and_fork_shares_for_free(pool: Pool, busybox_golden: str) -> None:
    assert pool.quotas
    pool.fork(busybox_golden, "vm1", disk_bytes=20 * MiB)
    usage = pool.vm_disk_usage_file("vm1")
    assert usage is not None
    # The golden's blocks stay charged to the golden: a fresh fork owns almost nothing.
    assert int(usage.read_text()) < MiB


def test_a_vm_past_its_quota_gets_edquot_others_write_on(pool: Pool, busybox_golden: str) -> None:
    pool.fork(busybox_golden, "full", disk_bytes=8 * MiB)
    pool.fork(busybox_golden, "other", disk_bytes=8 * MiB)
    assert _fill(pool.vm_path("full") / "big", 64) == errno.EDQUOT
    usage = pool.vm_disk_usage_file("full")
    assert usage is not None and int(usage.read_text()) <= 8 * MiB
    assert _fill(pool.vm_path("other") / "f", 4) == 0
    # A fork of the full VM shares its blocks without being charged for them,
    # and has a quota of its own.
    pool.fork("full", "child", disk_bytes=8 * MiB)
    assert _fill(pool.vm_path("child") / "f", 4) == 0
    # Squota charges an extent to its writer while anyone references it: the
    # full VM's blocks that its fork still shares stay on its account...
    os.unlink(pool.vm_path("full") / "big")
    pool.sync()
    assert _fill(pool.vm_path("full") / "again", 2) == errno.EDQUOT
    # ...and come back to it once the fork lets go of them.
    pool.delete_vm("child")
    (pool.vm_path("full") / "again").unlink(missing_ok=True)
    subprocess.run(["btrfs", "subvolume", "sync", str(pool.root)], check=True)
    pool.sync()
    assert _fill(pool.vm_path("full") / "again", 2) == 0


def test_no_limit_and_a_limit_set_later(pool: Pool, busybox_golden: str) -> None:
    pool.fork(busybox_golden, "free")
    assert _fill(pool.vm_path("free") / "f", 8) == 0
    pool.set_vm_disk_limit("free", 4 * MiB)
    assert _fill(pool.vm_path("free") / "g", 8) == errno.EDQUOT
    pool.set_vm_disk_limit("free", None)
    (pool.vm_path("free") / "g").unlink(missing_ok=True)
    assert _fill(pool.vm_path("free") / "g", 8) == 0


def test_quotas_survive_reopen(tmp_path: Path) -> None:
    with Pool(tmp_path / "p", image_size_bytes=2 * 2**30, flush_interval_s=None) as p:
        assert p.quotas
    with Pool(tmp_path / "p", image_size_bytes=2 * 2**30, flush_interval_s=None) as p:
        assert p.quotas  # enabling again on a pool that has them is fine


def test_reserve_refuses_with_insufficient_storage(tmp_path: Path) -> None:
    # A 1 GiB pool with a 2 GiB reserve is always below it.
    with Pool(
        tmp_path / "p", image_size_bytes=2**30, flush_interval_s=None, reserve_bytes=2 * 2**30
    ) as p:
        with pytest.raises(ArkerError) as err:
            p.check_storage()
        assert err.value.code is ErrorCode.INSUFFICIENT_STORAGE
        assert "reserve" in str(err.value)
    with Pool(
        tmp_path / "q", image_size_bytes=2**30, flush_interval_s=None, reserve_bytes=MiB
    ) as q:
        q.check_storage()
        assert 0 < q.free_bytes() <= 2**30
