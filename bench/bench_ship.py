"""Checkpoint shipping figures (not a test): what shipping a durable VM's
checkpoint to S3 adds before a run, as a function of the bytes the VM changed.

    .venv/bin/python bench/bench_ship.py [--quick] [--json FILE] [--port-base N]

Starts its own SeaweedFS (ports N..N+9, default 18450) and an engine in a
temporary data dir. For each size it writes that many fresh bytes in a VM,
checkpoints it and ships the checkpoint (an increment against the one before),
and sets the time against two floors measured in the same run: a bare local
checkpoint, and the put of an empty object through the same S3 client.
Prints one `name: value` line per figure. Everything it makes is removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from arker.cluster.blobs import BlobStore
from arker.cluster.checkpoints import Shipper
from arker.cluster.local import start_seaweed
from arker.engine.base import RunSpec
from arker.engine.host import NamespaceEngine

MB = 1_000_000


def _sh(engine: NamespaceEngine, vm: str, command: str) -> None:
    run_id = uuid.uuid4().hex[:12]
    engine.start_run(vm, run_id, RunSpec(command=command))
    info = engine.wait_run(vm, run_id, 600)
    engine.forget_run(vm, run_id)
    assert info.exit_code == 0, info


def bench(
    engine: NamespaceEngine, blobs: BlobStore, sizes: list[int], reps: int
) -> dict[str, float]:
    figures: dict[str, float] = {}
    shipper = Shipper(blobs, engine, compact_every=10_000)  # increments only: no compaction
    vm = "bench-" + uuid.uuid4().hex[:8]
    engine.fork("busybox", vm, hostname="bench")
    n = 0
    try:
        engine.checkpoint(vm, "base")
        shipper.ship(vm, "base")  # the whole stream once; every figure below is an increment
        local, empty = [], []
        for i in range(reps * 3):
            t = time.perf_counter()
            engine.checkpoint(vm, f"floor{i}")
            local.append(time.perf_counter() - t)
            engine.delete_checkpoint(vm, f"floor{i}")
            t = time.perf_counter()
            blobs.put_bytes(f"floor/{vm}/{i}", b"")
            empty.append(time.perf_counter() - t)
        floor_cp = statistics.median(local) * 1000
        floor_put = statistics.median(empty) * 1000
        figures["floor_local_checkpoint_median_ms"] = floor_cp
        figures["floor_empty_put_median_ms"] = floor_put
        for size in sizes:
            ships, totals, streams = [], [], []
            for _ in range(reps):
                if size:
                    _sh(engine, vm, f"head -c {size} /dev/urandom > /home/user/changed")
                engine.pool.sync()  # the write-back is the VM's, not the shipping's
                n += 1
                t0 = time.perf_counter()
                engine.checkpoint(vm, f"cp{n}")
                t1 = time.perf_counter()
                shipper.ship(vm, f"cp{n}")
                t2 = time.perf_counter()
                ships.append(t2 - t1)
                totals.append(t2 - t0)
                streams.append(shipper._latest(vm).size_bytes)  # type: ignore[union-attr]
            mb = size // MB
            ship_ms = statistics.median(ships) * 1000
            figures[f"ship_{mb}mb_median_ms"] = ship_ms
            figures[f"ship_{mb}mb_stream_bytes"] = float(statistics.median(streams)) or 1.0
            figures[f"ship_{mb}mb_vs_empty_put_ratio"] = ship_ms / floor_put
            figures[f"ship_{mb}mb_checkpoint_total_vs_local_ratio"] = (
                statistics.median(totals) * 1000 / floor_cp
            )
    finally:
        shipper.forget(vm)
        for key in blobs.list("floor/"):
            blobs.delete(key)
        engine.delete(vm)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0, 1 and 10 MB, 3 tries each")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--port-base", type=int, default=18450)
    args = parser.parse_args(argv)
    sizes = [0, 1 * MB, 10 * MB] if args.quick else [0, 1 * MB, 10 * MB, 100 * MB]
    reps = 3 if args.quick else 5
    work = Path(tempfile.mkdtemp(prefix="arker-bench-ship-"))
    weed = start_seaweed(work / "weed", args.port_base)
    engine = NamespaceEngine(work / "engine", image_size_bytes=8 << 30, networking=False)
    try:
        blobs = BlobStore.from_url(
            weed.blob_url("bench", "ship"), endpoint_url=weed.endpoint_url,
            access_key=weed.access_key, secret_key=weed.secret_key,
        )  # fmt: skip
        engine.open()
        engine.build_golden("busybox")
        figures = bench(engine, blobs, sizes, reps)
    finally:
        engine.close()
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)
    for name, value in figures.items():
        print(f"{name}: {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
