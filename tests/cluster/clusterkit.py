"""A real cluster for tests: a PostgreSQL database of its own, host agents
(`arker host`) and API replicas (`arker serve --cluster`) as subprocesses on
ports 18300-18399, each host over its own data dir (/tmp/ccore-*) with the
busybox golden. Everything is stopped by its pid, and a SIGKILLed host is
started again over its data dir and stopped cleanly, so its engine's own
reconcile (from its own state) kills the VM processes it left and unmounts
its pool."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))  # live
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))  # pg
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # contract_check


from live import Live, _arker_cmd, build_busybox, create_key
from pg import PG_URL, _admin_sync

__all__ = ["PG_URL", "Cluster", "HostProc", "ReplicaProc", "cluster_live", "make_database"]

PORTS = iter(range(18300, 18400))
START_TIMEOUT_S = 90.0


# What a test of a real cluster (host agents as processes, PostgreSQL) needs.
NEEDS_CLUSTER = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root"),
    pytest.mark.skipif(not PG_URL, reason="ARKER_TEST_POSTGRES_URL is not set"),
]


def make_database() -> tuple[str, str]:
    assert PG_URL
    name = "arker_ccore_" + uuid.uuid4().hex[:10]
    _admin_sync(PG_URL, f'CREATE DATABASE "{name}"')
    return PG_URL.rsplit("/", 1)[0] + "/" + name, name


def drop_database(name: str) -> None:
    assert PG_URL
    _admin_sync(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Proc:
    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{type(self).__name__}-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def all_logs(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in sorted(self.data_dir.glob(f"{type(self).__name__}-*.log"))
        )

    def _spawn(self, cmd: list[str], health: str, env: dict[str, str] | None = None) -> None:
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{cmd[1:3]} exited {self.proc.returncode}: {self.log()[-3000:]}"
                )
            try:
                if httpx.get(self.url + health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{cmd[1:3]} did not answer: {self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, by this process's pid only."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@dataclass
class HostProc(Proc):
    database_url: str = ""
    token_file: Path = Path()
    blob_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    lease_ttl_s: float = 5.0

    def start(self) -> None:
        cmd = [
            *_arker_cmd(),
            "host",
            "--database-url",
            self.database_url,
            "--token-file",
            str(self.token_file),
            "--data-dir",
            str(self.data_dir),
            "--advertise",
            self.url,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--pool-reserve-mib",
            "0",
            "--lease-ttl",
            str(self.lease_ttl_s),
            *(["--blob-url", self.blob_url] if self.blob_url else []),
        ]
        self._spawn(cmd, "/health", self.env)

    @property
    def host_id(self) -> str:
        return (self.data_dir / "host-id").read_text().strip()

    def mounts(self) -> list[str]:
        text = Path("/proc/self/mounts").read_text()
        return [line for line in text.splitlines() if str(self.data_dir) in line]


@dataclass
class ReplicaProc(Proc):
    database_url: str = ""
    token_file: Path = Path()
    blob_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        cmd = [
            *_arker_cmd(),
            "serve",
            "--cluster",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            self.database_url,
            "--host-token-file",
            str(self.token_file),
            *(["--blob-url", self.blob_url] if self.blob_url else []),
        ]
        self._spawn(cmd, "/healthz", self.env)


@dataclass
class Cluster:
    root: Path
    database_url: str
    database_name: str
    token_file: Path
    hosts: list[HostProc] = field(default_factory=list)
    replicas: list[ReplicaProc] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    blob_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, blob_url: str | None = None, env: dict[str, str] | None = None) -> Cluster:
        root = Path(tempfile.mkdtemp(prefix="ccore-", dir="/tmp"))
        url, name = make_database()
        token_file = root / "host-token"
        token_file.write_text(secrets.token_urlsafe(24))
        return cls(root, url, name, token_file, blob_url=blob_url, env=dict(env or {}))

    def add_host(self, lease_ttl_s: float = 5.0) -> HostProc:
        data_dir = self.root / f"host{len(self.hosts)}"
        data_dir.mkdir()
        build_busybox(data_dir)
        host = HostProc(
            data_dir,
            next(PORTS),
            database_url=self.database_url,
            token_file=self.token_file,
            blob_url=self.blob_url,
            env=self.env,
            lease_ttl_s=lease_ttl_s,
        )
        self.hosts.append(host)
        host.start()
        return host

    def add_replica(self) -> ReplicaProc:
        data_dir = self.root / f"replica{len(self.replicas)}"
        data_dir.mkdir()
        replica = ReplicaProc(
            data_dir,
            next(PORTS),
            database_url=self.database_url,
            token_file=self.token_file,
            blob_url=self.blob_url,
            env=self.env,
        )
        if not self.keys:
            self.keys = {
                org: create_key(data_dir, org, self.database_url) for org in ("acme", "globex")
            }
        self.replicas.append(replica)
        replica.start()
        return replica

    def close(self) -> list[str]:
        """Stop everything; the mounts any host left (none, if all is well)."""
        for replica in self.replicas:
            replica.stop()
        left: list[str] = []
        for host in self.hosts:
            if host.proc is None and host.starts:
                # Killed: start it over its own state, so its engine reconciles
                # (kills what its VMs left, unmounts), then stop it cleanly.
                with contextlib.suppress(RuntimeError):
                    host.start()
            host.stop()
            left += host.mounts()
        drop_database(self.database_name)
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
        return left


@contextlib.contextmanager
def cluster_live(hosts: int = 2) -> Iterator[Live]:
    """A cluster as the e2e tests' `live`: its replica is the server they call."""
    c = Cluster.create()
    try:
        for _ in range(hosts):
            c.add_host()
        replica = c.add_replica()
        admin = create_key(replica.data_dir, "ops", c.database_url, admin=True)
        yield Live(replica, c.keys, admin)  # type: ignore[arg-type]
    finally:
        left = c.close()
        assert not left, left
