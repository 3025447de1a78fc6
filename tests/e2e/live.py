"""A real `arker serve` process on the real engine, for end-to-end tests:
started on a free port over its own data dir, stopped (SIGTERM) or killed
(SIGKILL) by its pid only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from contract_check import check

from arker import Arker, AsyncArker

__all__ = [
    "Live",
    "LiveServer",
    "build_busybox",
    "create_key",
    "free_port",
    "make_live",
    "stop_live",
]

VENV_BIN = Path(sys.executable).parent
ARKER = str(VENV_BIN / "arker") if (VENV_BIN / "arker").exists() else None
START_TIMEOUT_S = 60.0


def _arker_cmd() -> list[str]:
    return [ARKER] if ARKER else [sys.executable, "-c", "from arker.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def build_busybox(data_dir: Path, *more: str) -> None:
    """Make the busybox golden (and `more`, e.g. "debian") through the engine
    API, before the server runs."""
    from arker.engine.host import NamespaceEngine

    engine = NamespaceEngine(data_dir, networking=False)
    engine.open()
    try:
        for name in ("busybox", *more):
            engine.build_golden(name)
    finally:
        engine.close()


def _db_args(database_url: str | None) -> list[str]:
    return ["--database-url", database_url] if database_url else []


def create_key(
    data_dir: Path, org: str, database_url: str | None = None, *, admin: bool = False
) -> str:
    """`arker keys create [--admin]`; the key is the last line of its output."""
    proc = subprocess.run(
        [
            *_arker_cmd(),
            "keys",
            "create",
            "--org",
            org,
            "--data-dir",
            str(data_dir),
            *_db_args(database_url),
            *(["--admin"] if admin else []),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("ark_live_"), out
    return key


@dataclass
class LiveServer:
    data_dir: Path
    database_url: str | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"server-{self.starts}.log"

    def start(self) -> None:
        self.port = self.port or free_port()
        self.starts += 1
        cmd = [
            *_arker_cmd(),
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *_db_args(self.database_url),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "ARKER_ENGINE"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"arker serve exited {self.proc.returncode}: {self.log()[-2000:]}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"arker serve did not answer: {self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM, as a service manager would; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash. Only this server's pid."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@dataclass
class Live:
    server: LiveServer
    keys: dict[str, str]
    admin_key: str = ""  # of org "ops", made with --admin: may read /metrics

    @property
    def url(self) -> str:
        return self.server.url

    def metrics(self) -> str:
        """GET /metrics with the admin key."""
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        r = httpx.get(f"{self.url}/metrics", headers=headers, timeout=30)
        check(r)
        assert r.status_code == 200, r.text
        return r.text

    def client(self, org: str = "acme") -> Arker:
        """An SDK client whose every response is checked against the contract."""
        http = httpx.Client(event_hooks={"response": [_check_sync]})
        return Arker(api_key=self.keys[org], base_url=self.url, http_client=http)

    def aclient(self, org: str = "acme") -> AsyncArker:
        """An async SDK client whose every response is checked against the contract."""
        http = httpx.AsyncClient(event_hooks={"response": [_check_async]})
        return AsyncArker(api_key=self.keys[org], base_url=self.url, http_client=http)


def _check_sync(response: httpx.Response) -> None:
    response.read()
    check(response)


async def _check_async(response: httpx.Response) -> None:
    await response.aread()
    check(response)


def make_live(database_url: str | None, *extra_args: str, goldens: tuple[str, ...] = ()) -> Live:
    """A server over busybox and `goldens`, with keys for acme, globex and ops."""
    data_dir = Path(tempfile.mkdtemp(prefix="arker-e2e-"))
    server = LiveServer(data_dir, database_url, list(extra_args))
    try:
        build_busybox(data_dir, *goldens)
        keys = {org: create_key(data_dir, org, database_url) for org in ("acme", "globex")}
        admin_key = create_key(data_dir, "ops", database_url, admin=True)
        server.start()
    except BaseException:
        server.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return Live(server, keys, admin_key)


def stop_live(live: Live, *, clean: bool = True) -> None:
    if live.server.proc is not None:
        rc = live.server.stop()
        if clean:
            # uvicorn re-raises SIGTERM after a clean shutdown, so -15 is clean too
            log = live.server.log()
            assert rc in (0, -signal.SIGTERM), log[-2000:]
            assert "Application shutdown complete" in log, log[-2000:]
    data_dir = str(live.server.data_dir)
    mounts = [
        line for line in Path("/proc/self/mounts").read_text().splitlines() if data_dir in line
    ]
    assert not mounts, f"mounts left behind: {mounts}"
    shutil.rmtree(data_dir, ignore_errors=True)
