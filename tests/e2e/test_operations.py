"""Operating the server: keys from the command line, one JSON log line per
request with its id, metrics, and a clean SIGTERM."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from live import ARKER, Live, create_key, make_live, stop_live

from arker import Arker, ArkerError


def _arker(*args: str) -> str:
    cmd = [ARKER] if ARKER else ["arker"]
    return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True).stdout


def _db_args(live: Live) -> list[str]:
    url = live.server.database_url
    return ["--data-dir", str(live.server.data_dir), *(["--database-url", url] if url else [])]


def test_keys_ls_and_revoke(live: Live) -> None:
    key = create_key(live.server.data_dir, "initech", live.server.database_url)
    with Arker(api_key=key, base_url=live.url) as arker:
        assert arker.list().total == 0
        listing = _arker("keys", "ls", *_db_args(live))
        assert key not in listing  # no secrets shown
        row = next(line for line in listing.splitlines() if "initech" in line)
        key_id = row.split()[0]
        assert key.startswith(row.split()[1].rstrip(".").rstrip("…"))
        _arker("keys", "revoke", key_id, *_db_args(live))
        assert "initech" in _arker("keys", "ls", *_db_args(live))
        time.sleep(2.5)  # the server caches a valid key for 2 s
        try:
            arker.list()
            raise AssertionError("a revoked key still works")
        except ArkerError as exc:
            assert exc.code == "unauthorized" and exc.status == 401


def test_request_log_and_metrics(live: Live) -> None:
    r = httpx.get(f"{live.url}/healthz")
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 5  # the line is written just after the answer is sent
    while True:
        lines = [json.loads(ln) for ln in live.server.log().splitlines() if ln.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == rid]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(mine) == 1
    assert mine[0]["route"] == "/healthz" and mine[0]["status"] == 200
    metrics = live.metrics()
    assert 'arker_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics
    assert "arker_vms_running" in metrics


def _processes_using(data_dir: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie holds nothing but its pid (see the report on reaping)
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            exe = str((proc / "exe").resolve()) if (proc / "exe").exists() else ""
        except OSError:
            continue
        if str(data_dir) in cmdline or str(data_dir) in exe:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_sigterm_leaves_no_processes_or_mounts(single_db: str | None) -> None:
    live = make_live(
        single_db,
        "--api-prefix",
        "/api",
        "--burst-suffix",
        "uswe",
        "--region",
        "x",
        "--max-file-bytes",
        "1024",
    )
    data_dir = live.server.data_dir
    try:
        with Arker(api_key=live.keys["acme"], base_url=live.url + "/api") as arker:
            vm = arker.vm("busybox").fork()
            assert vm.vm_id.endswith("_uswe") and vm.info is not None and vm.info.region == "x"
            vm.run("sleep 300 &")  # a background process that outlives its run
            vm.run("sleep 300", background=True)
            assert _processes_using(data_dir)  # the VM's init and the run's helper
            vm.sync.write_file("/home/user/small", b"x" * 1024)
            with pytest.raises(ArkerError) as err:
                vm.sync.write_file("/home/user/big", b"x" * 1025)
            assert err.value.code == "payload_too_large" and err.value.status == 413
        rc = live.server.stop()
        assert rc in (0, -15)
        assert "Application shutdown complete" in live.server.log()
        time.sleep(0.5)
        assert not _processes_using(data_dir)
        assert not any(
            str(data_dir) in m for m in Path("/proc/self/mounts").read_text().splitlines()
        )
    finally:
        stop_live(live, clean=False)
