"""`arker cluster up/down` for real: PostgreSQL, SeaweedFS, two host agents and
two API replicas behind one port; a VM made through the printed URL and key
runs; `down` leaves nothing running or mounted, and a second `down` says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

ARKER = [sys.executable, "-c", "from arker.cli import main; main()"]


def _arker(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([*ARKER, *args], capture_output=True, text=True, env=env,
                          timeout=400, check=False, stdin=subprocess.DEVNULL)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_cluster_up_serves_and_down_leaves_nothing() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("host agents need root")
    from arker import Arker

    where = Path(tempfile.mkdtemp(prefix="cblobs-up-", dir="/tmp"))
    where.chmod(0o755)  # PostgreSQL runs as its own user under it
    try:
        up = _arker("cluster", "up", "--dir", str(where), "--hosts", "2", "--replicas", "2",
                    "--port-base", "18470")  # fmt: skip
        assert up.returncode == 0, up.stderr[-4000:]
        info = json.loads(up.stdout)
        assert set(info) == {"api_url", "api_key", "hosts", "replicas"}
        assert len(info["hosts"]) == 2 and len(info["replicas"]) == 2
        pids = [h["pid"] for h in info["hosts"]] + [r["pid"] for r in info["replicas"]]
        assert all(_alive(p) for p in pids)
        again = _arker("cluster", "up", "--dir", str(where))
        assert again.returncode == 1 and "is up" in again.stderr

        arker = Arker(api_key=info["api_key"], base_url=info["api_url"])
        for i in range(2):  # through the proxy, to either replica
            with arker.vm("busybox").fork(name=f"try{i}") as vm:
                result = vm.run("echo hi from the cluster")
                assert result.exit_code == 0 and result.stdout == b"hi from the cluster\n"
        arker.close()

        down = _arker("cluster", "down", "--dir", str(where))
        assert down.returncode == 0, down.stderr[-4000:]
        assert not any(_alive(p) for p in pids)
        assert str(where) not in Path("/proc/self/mounts").read_text()
        assert not (where / "cluster.json").exists()
        twice = _arker("cluster", "down", "--dir", str(where))
        assert twice.returncode == 1 and "no cluster" in twice.stderr
    finally:
        if (where / "cluster.json").exists():
            _arker("cluster", "down", "--dir", str(where))
        shutil.rmtree(where, ignore_errors=True)
