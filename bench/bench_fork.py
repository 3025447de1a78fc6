#!/usr/bin/env python3
"""Fork time against VM size, next to the bare snapshot ioctl in the same run.

    bench/bench_fork.py                 30 forks each of a 10 MB and a 1 GB VM
    bench/bench_fork.py --quick         5 forks each, 10 MB and 256 MB (for CI)

Each VM's data is written and synced first (the pool's flusher does that in
service), then forked repeatedly with Pool.fork; the floor is
BTRFS_IOC_SNAP_CREATE_V2 on already-open fds, alternating with the forks.
Children are deleted after the series, outside the timing. Prints one line
per series and the ratios.
Needs root; makes a sparse image in a temporary directory and removes it.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from arker.engine import _btrfs
from arker.engine.goldens import build_busybox
from arker.engine.pool import Pool

MB = 1000 * 1000


def _fill(path: Path, size_bytes: int) -> None:
    block = os.urandom(4 * 1024 * 1024)  # incompressible, written once
    with open(path, "wb") as f:
        left = size_bytes
        while left > 0:
            left -= f.write(block[: min(left, len(block))])


def _p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _measure(pool: Pool, vm: str, n: int) -> tuple[list[float], list[float]]:
    """(Pool.fork times, bare ioctl times) in ms for `n` snapshots of `vm`,
    alternating so that both see the same background (flusher, cleaner)."""
    forks: list[float] = []
    raw: list[float] = []
    src = os.open(pool.vm_path(vm), os.O_RDONLY | os.O_DIRECTORY)
    dst = os.open(pool.root / "vms", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            takes: list[tuple[list[float], Callable[[], object]]] = [
                (forks, functools.partial(pool.fork, vm, f"{vm}-child-{i}")),
                (raw, functools.partial(_btrfs.snapshot, src, dst, f"{vm}-raw-{i}")),
            ]
            for times, take in takes if i % 2 else reversed(takes):  # no order bias
                start = time.perf_counter()
                take()
                times.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(src)
        os.close(dst)
        # Deleting afterwards keeps the kernel's cleaner out of the samples.
        for i in range(n):
            pool.delete_vm(f"{vm}-child-{i}")
            pool.delete_vm(f"{vm}-raw-{i}")
        pool.sync()
    return forks, raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="few iterations, smaller big VM")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--big-mb", type=int, default=None, help="size of the big VM (MB)")
    ap.add_argument("--data-dir", type=Path, default=None, help="where to make the pool")
    args = ap.parse_args(argv)
    n = args.iterations or (5 if args.quick else 30)
    big_mb = args.big_mb or (256 if args.quick else 1000)
    sizes = {"10 MB": 10 * MB, f"{big_mb} MB": big_mb * MB}

    with tempfile.TemporaryDirectory(dir=args.data_dir, prefix="bench-fork-") as tmp:
        pool = Pool(Path(tmp), image_size_bytes=max(4 * 2**30, 3 * big_mb * MB))
        pool.open()
        try:
            build_busybox(pool)
            rows: dict[str, tuple[list[float], list[float]]] = {}
            for label, size in sizes.items():
                vm = f"vm-{size}"
                _fill(pool.fork("busybox", vm) / "data.bin", size)
                pool.sync()
                rows[label] = _measure(pool, vm, n)
        finally:
            pool.close()

    print(f"fork timing, {n} samples each (ms)")
    for label, (forks, raw) in rows.items():
        print(
            f"fork {label:>8}: median {statistics.median(forks):7.2f}  p99 {_p99(forks):7.2f}"
            f"   raw ioctl: median {statistics.median(raw):7.2f}  p99 {_p99(raw):7.2f}"
            f"   fork/raw {statistics.median(forks) / statistics.median(raw):5.2f}x"
        )
    (small_f, small_r), (big_f, big_r) = rows.values()
    print(
        f"big/small: fork {statistics.median(big_f) / statistics.median(small_f):.2f}x"
        f"  raw {statistics.median(big_r) / statistics.median(small_r):.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
