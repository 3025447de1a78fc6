"""The floors each figure is compared with, measured in the same run on the
same machine: the raw btrfs snapshot ioctl (the engine's own function, on the
server's own pool), a bare `subprocess.run(["true"])`, and an HTTP round trip
to the server's no-op endpoint over a kept-alive connection."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from arker.engine import _btrfs
from arkerbench.stats import Series, time_ms

__all__ = ["SnapshotFloor", "http_floor", "pool_root", "subprocess_floor"]

FLOOR_DIR = "bench-floor"


def pool_root(data_dir: Path) -> Path:
    """Where the server's pool lives: the data dir itself on btrfs, else the
    loop-mounted image at `pool/` (see engine/pool.py)."""
    if _btrfs.fs_type(str(data_dir)) == _btrfs.BTRFS_SUPER_MAGIC:
        return data_dir
    return data_dir / "pool"


class SnapshotFloor:
    """Bare BTRFS_IOC_SNAP_CREATE_V2 calls into a scratch directory of the
    pool, outside the server's tree (`vms/`), so the server never sees them."""

    def __init__(self, data_dir: Path) -> None:
        self.root = pool_root(data_dir)
        self.dir = self.root / FLOOR_DIR
        self._made: list[str] = []

    def __enter__(self) -> SnapshotFloor:
        self.dir.mkdir(exist_ok=True)
        return self

    def snapshot_ms(self, source: Path) -> float:
        """Time one snapshot of `source` (the fds are opened outside the timing,
        as the floor is the ioctl itself)."""
        name = f"s{len(self._made)}"
        src = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
        dst = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            took = time_ms(lambda: _btrfs.snapshot(src, dst, name))
        finally:
            os.close(src)
            os.close(dst)
        self._made.append(name)
        return took

    def golden(self, name: str) -> Path:
        return self.root / "goldens" / name

    def vm(self, vm_id: str) -> Path:
        return self.root / "vms" / vm_id

    def __exit__(self, *exc: object) -> None:
        dst = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in self._made:
                _btrfs.destroy_subvolume(dst, name)
        finally:
            os.close(dst)
        self._made.clear()
        self.dir.rmdir()


def subprocess_floor(n: int) -> Series:
    """A bare `subprocess.run(["true"])`: the least a command can cost from Python."""
    return Series([time_ms(lambda: subprocess.run(["true"], check=True)) for _ in range(n)])


def http_floor(http: httpx.Client, base_url: str, n: int) -> Series:
    """GET /healthz of the same server over the same kept-alive client the SDK uses."""
    url = f"{base_url}/healthz"
    http.get(url).raise_for_status()  # open the connection outside the timing
    return Series([time_ms(lambda: http.get(url).raise_for_status()) for _ in range(n)])
