"""Engine figures (not a test): run round trip, VM start, idle memory per VM,
then the fork series of bench_fork.py (10 MB and 1 GB VMs against the raw
snapshot ioctl), so that one command prints every figure of the engine.

    .venv/bin/python bench/bench_engine.py [--quick] [--data-dir DIR]

Prints one `name: value` line per figure. The run round trip of `true` is set
against a bare `subprocess.run(["true"])` measured in the same process, so the
ratio holds across machines. Everything it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import bench_fork  # beside this file: the script's directory is on sys.path

from arker.engine.base import RunSpec
from arker.engine.host import NamespaceEngine


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def bench(engine: NamespaceEngine, runs: int, starts: int, idle_vms: int) -> None:
    floor = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["true"], check=True)
        floor.append(time.perf_counter() - t)
    floor_ms, floor_p99 = _ms(floor)
    print(f"floor subprocess.run(true) ms: median {floor_ms:.2f} p99 {floor_p99:.2f}")

    vm = "bench-" + uuid.uuid4().hex[:8]
    engine.fork("busybox", vm, hostname="bench")
    try:
        engine.start(vm)
        trips = []
        for i in range(runs):
            t = time.perf_counter()
            engine.start_run(vm, f"r{i}", RunSpec(command="true"))
            info = engine.wait_run(vm, f"r{i}")
            trips.append(time.perf_counter() - t)
            assert info.exit_code == 0, info
            engine.forget_run(vm, f"r{i}")
        med, p99 = _ms(trips)
        print(f"run true round trip ms: median {med:.2f} p99 {p99:.2f}")
        print(f"run true / floor ratio: {med / floor_ms:.2f}")

        boots = []
        for _ in range(starts):
            engine.stop(vm)
            t = time.perf_counter()
            engine.start(vm)
            boots.append(time.perf_counter() - t)
        med, p99 = _ms(boots)
        print(f"vm start from stopped ms: median {med:.2f} p99 {p99:.2f}")
        stops = []
        for _ in range(starts):
            t = time.perf_counter()
            engine.stop(vm)
            stops.append(time.perf_counter() - t)
            engine.start(vm)
        print(f"vm stop ms: median {_ms(stops)[0]:.2f}")
    finally:
        engine.delete(vm)

    many = [f"idle-{i}-{uuid.uuid4().hex[:6]}" for i in range(idle_vms)]
    before = _mem_available()
    try:
        for v in many:
            engine.fork("busybox", v, hostname="idle")
            engine.start(v)
        time.sleep(1)
        used = sum(engine.memory_bytes(v) for v in many)
        delta = before - _mem_available()
        print(f"idle vms running: {idle_vms}")
        print(f"idle memory per vm (cgroup) KiB: {used / idle_vms / 1024:.0f}")
        print(f"idle memory per vm (MemAvailable delta) KiB: {delta / idle_vms / 1024:.0f}")
    finally:
        for v in many:
            engine.delete(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations, 10 idle VMs")
    parser.add_argument("--data-dir", help="engine data dir (default: a temporary one)")
    args = parser.parse_args()
    data = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="arker-bench-"))
    engine = NamespaceEngine(data, image_size_bytes=4 << 30)
    engine.open()
    try:
        engine.build_golden("busybox")
        if args.quick:
            bench(engine, runs=20, starts=5, idle_vms=10)
        else:
            bench(engine, runs=300, starts=30, idle_vms=100)
    finally:
        engine.close()
        if not args.data_dir:
            shutil.rmtree(data, ignore_errors=True)
    bench_fork.main(["--quick"] if args.quick else [])


if __name__ == "__main__":
    main()
