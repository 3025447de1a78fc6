"""A whole cluster on this machine, for trying it: `arker cluster up/down`.

    DIR/postgres/            Debian's PostgreSQL 15, a cluster of its own
    DIR/seaweed/             SeaweedFS as the S3 store
    DIR/host<i>/             each host agent's data dir (its own btrfs pool)
    DIR/replica<i>/          each API replica's dir
    DIR/host-token           the token the replicas send the hosts
    DIR/cluster.json         what `up` started (pids and their start times)

Ports from --port-base B: PostgreSQL B, SeaweedFS B+10..B+19, the round-robin
proxy (the API URL) B+20, replicas from B+21, hosts after them. Hosts are plain
processes on distinct ports with distinct data dirs (each engine claims its own
nft table, address block and id range). `down` stops exactly what `up` started,
by pid, checking each pid's start time so a reused pid is never signalled.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from arker.cluster.local import Postgres, remove_seaweed_sockets, start_postgres, start_seaweed
from arker.errors import ArkerError, ErrorCode

__all__ = ["down", "up"]

STATE = "cluster.json"
START_TIMEOUT_S = 120.0


def _arker() -> list[str]:
    return [sys.executable, "-c", "from arker.cli import main; main()"]


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env}, start_new_session=True,
        )  # fmt: skip
    return {"pid": proc.pid, "start": _start_time(proc.pid), "log": str(log)}


def _wait_http(url: str, record: dict[str, Any]) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _start_time(record["pid"]) != record["start"]:
            tail = Path(record["log"]).read_text(errors="replace")[-3000:]
            raise ArkerError(ErrorCode.UNAVAILABLE, f"{url} exited: {tail}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ArkerError(ErrorCode.UNAVAILABLE, f"{url} did not answer in {START_TIMEOUT_S:g} s")


def up(root: Path, *, hosts: int = 3, replicas: int = 2, port_base: int = 8800) -> dict[str, Any]:
    """Start the cluster; return what `arker cluster up` prints."""
    if hosts < 1 or replicas < 1:
        raise ArkerError(ErrorCode.INVALID_REQUEST, "a cluster needs a host and a replica")
    root = root.resolve()
    if (root / STATE).exists():
        raise ArkerError(ErrorCode.CONFLICT, f"a cluster is up in {root}: `arker cluster down` it")
    root.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"port_base": port_base, "hosts": [], "replicas": []}
    try:
        return _up(root, hosts, replicas, port_base, state)
    except BaseException:
        _save(root, state)
        down(root)
        raise


def _up(root: Path, hosts: int, replicas: int, base: int, state: dict[str, Any]) -> dict[str, Any]:
    from arker.engine.host import NamespaceEngine

    pg = start_postgres(root / "postgres", base)
    state["postgres"] = {"dir": str(pg.dir), "pid": pg.pid, "start": _start_time(pg.pid)}
    _save(root, state)
    weed = start_seaweed(root / "seaweed", base + 10)
    state["seaweed"] = {"pid": weed.pid, "start": _start_time(weed.pid), "port_base": base + 10}
    _save(root, state)
    blob_url = weed.blob_url("arker", "cluster")
    env = weed.env()
    token = root / "host-token"
    if not token.exists():
        token.write_text(secrets.token_urlsafe(32))
        token.chmod(0o600)
    for i in range(hosts):
        data = root / f"host{i}"
        engine = NamespaceEngine(data, networking=False)  # the golden, before the host runs
        engine.open()
        try:
            engine.build_golden("busybox")
        finally:
            engine.close()
        port = base + 21 + replicas + i
        argv = [*_arker(), "host", "--database-url", pg.url, "--blob-url", blob_url,
                "--token-file", str(token), "--data-dir", str(data),
                "--advertise", f"http://127.0.0.1:{port}", "--listen", f"127.0.0.1:{port}",
                "--pool-reserve-mib", "0"]  # fmt: skip
        record = _spawn(argv, root / f"host{i}.log", env)
        state["hosts"].append({**record, "dir": str(data), "url": f"http://127.0.0.1:{port}"})
        _save(root, state)
        _wait_http(f"http://127.0.0.1:{port}/health", record)
    key = _api_key(root, pg)
    for i in range(replicas):
        port = base + 21 + i
        data = root / f"replica{i}"
        data.mkdir(exist_ok=True)
        argv = [*_arker(), "serve", "--cluster", "--port", str(port), "--data-dir", str(data),
                "--database-url", pg.url, "--blob-url", blob_url,
                "--host-token-file", str(token)]  # fmt: skip
        record = _spawn(argv, root / f"replica{i}.log", env)
        state["replicas"].append({**record, "url": f"http://127.0.0.1:{port}"})
        _save(root, state)
        _wait_http(f"http://127.0.0.1:{port}/healthz", record)
    api = f"http://127.0.0.1:{base + 20}"
    backends = [r["url"].removeprefix("http://") for r in state["replicas"]]
    argv = [sys.executable, "-m", "arker.cluster.rrproxy", "--listen", f"127.0.0.1:{base + 20}",
            *backends]  # fmt: skip
    state["proxy"] = _spawn(argv, root / "proxy.log", {})
    _save(root, state)
    _wait_http(f"{api}/healthz", state["proxy"])
    out = {
        "api_url": api,
        "api_key": key,
        "hosts": [
            {"id": (Path(h["dir"]) / "host-id").read_text().strip(), "pid": h["pid"]}
            for h in state["hosts"]
        ],
        "replicas": [{"url": r["url"], "pid": r["pid"]} for r in state["replicas"]],
    }
    state["printed"] = out
    _save(root, state)
    return out


def _api_key(root: Path, pg: Postgres) -> str:
    proc = subprocess.run(
        [*_arker(), "keys", "create", "--org", "default", "--data-dir", str(root / "replica0"),
         "--database-url", pg.url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ArkerError(ErrorCode.INTERNAL, f"arker keys create failed: {proc.stderr[-2000:]}")
    return lines[-1]


def _save(root: Path, state: dict[str, Any]) -> None:
    tmp = root / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, root / STATE)


def _stop(record: dict[str, Any] | None, grace_s: float) -> bool:
    """SIGTERM the recorded process (if it is still that process), SIGKILL
    after `grace_s`; True if it had to be killed."""
    if not record or _start_time(record["pid"]) != record.get("start"):
        return False
    os.kill(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if _start_time(record["pid"]) != record["start"]:
            return False
        time.sleep(0.05)
    os.kill(record["pid"], signal.SIGKILL)
    while _start_time(record["pid"]) == record["start"]:
        time.sleep(0.05)
    return True


def down(root: Path) -> None:
    """Stop everything `up` started in `root`: nothing is left running or mounted."""
    from arker.engine.host import NamespaceEngine

    root = root.resolve()
    try:
        state = json.loads((root / STATE).read_text())
    except FileNotFoundError:
        raise ArkerError(ErrorCode.NOT_FOUND, f"no cluster is up in {root}") from None
    _stop(state.get("proxy"), 5)
    for replica in state.get("replicas", []):
        _stop(replica, 15)
    for host in state.get("hosts", []):
        if _stop(host, 60):
            # Killed: its engine's own reconcile kills what its VMs left and unmounts.
            engine = NamespaceEngine(Path(host["dir"]), networking=False)
            engine.open()
            engine.close()
    weed = state.get("seaweed")
    if weed:
        _stop(weed, 2)  # a clean stop takes 17-27 s: its data is all in S3 objects already
        remove_seaweed_sockets(weed["port_base"])
    pg = state.get("postgres")
    if pg and _start_time(pg["pid"]) == pg["start"]:
        Postgres(Path(pg["dir"]), state["port_base"], "arker", "", "arker", pg["pid"]).stop()
    (root / STATE).unlink()
