"""`bench/bench_ship.py --quick` end to end: it runs, cleans up, and reports
every figure as a finite positive number. Times are not asserted (a shared
machine makes them flaky); only the shape and that streams grow with the bytes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.root


def test_quick_ship_bench_reports_every_figure(tmp_path: Path) -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the bench needs root (namespaces, btrfs)")
    out = tmp_path / "ship.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_ship.py"), "--quick", "--json", str(out),
         "--port-base", "18460"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True, stdin=subprocess.DEVNULL, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    figures = json.loads(out.read_text())
    for mb in (0, 1, 10):
        for kind in ("median_ms", "stream_bytes", "vs_empty_put_ratio",
                     "checkpoint_total_vs_local_ratio"):  # fmt: skip
            assert f"ship_{mb}mb_{kind}" in figures
    assert {"floor_local_checkpoint_median_ms", "floor_empty_put_median_ms"} <= figures.keys()
    for name, value in figures.items():
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, name
    # Increments carry what changed: about the bytes written (random data does not compress).
    assert figures["ship_0mb_stream_bytes"] < 100_000
    assert 900_000 < figures["ship_1mb_stream_bytes"] < 1_500_000
    assert 9_000_000 < figures["ship_10mb_stream_bytes"] < 12_000_000
    assert not list(Path("/tmp").glob("arker-bench-ship-*"))
