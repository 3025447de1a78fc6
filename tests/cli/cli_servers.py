"""Real `arker serve` processes for the CLI tests, on the real engine.

Each server gets a fresh data directory with the busybox golden and a fresh
key, listens on a free port, and on stop is sent SIGTERM, has whatever it
left mounted under its data directory unmounted, and its directory removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# The installed entry point, so the tests run `arker` as users do.
_ARKER = Path(sys.executable).with_name("arker")
_IN_PROCESS = [sys.executable, "-c", "from arker.cli import main; main()"]
ARKER = [str(_ARKER)] if _ARKER.exists() else _IN_PROCESS


def arker(
    *args: str, env: dict[str, str] | None = None, input: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    """`arker ARGS` as a subprocess; stdin is /dev/null unless `input` is given,
    so a run never waits on the test runner's stdin."""
    return subprocess.run(
        [*ARKER, *args],
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalServer:
    base_url: str  # with the API prefix
    api_key: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def env(self) -> dict[str, str]:
        """The environment a client of this server needs, and nothing that
        would point it elsewhere."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("ARKER_REGION", "AUTH_KEY", "ARKER_SOURCE_VM", "ARKER_SMOKE_TARGETS")
        }
        env.update(ARKER_API_KEY=self.api_key, ARKER_BASE_URL=self.base_url, COLUMNS="200")
        return env


def _check(proc: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc.stdout


def start_server(data_dir: Path, api_prefix: str = "") -> LocalServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    _check(arker("goldens", "build", "busybox", "--data-dir", str(data_dir)), "goldens build")
    created = _check(arker("keys", "create", "--data-dir", str(data_dir)), "keys create")
    key = created.decode().strip().splitlines()[-1]
    port = free_port()
    log = data_dir.with_name(data_dir.name + ".log")
    cmd = [*ARKER, "serve", "--port", str(port), "--data-dir", str(data_dir)]
    if api_prefix:
        cmd += ["--api-prefix", api_prefix]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = LocalServer(f"http://127.0.0.1:{port}{api_prefix}", key, data_dir, proc, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            remove_server(server)
            raise RuntimeError(f"arker serve exited: {log.read_text(errors='replace')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            remove_server(server)
            raise RuntimeError("arker serve did not come up in 60 s")
        time.sleep(0.1)


def unmount_under(path: Path) -> None:
    """Unmount everything below `path`, deepest first (a server killed hard
    leaves its pool image mounted)."""
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted(
        (p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True
    ):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def remove_server(server: LocalServer) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    remove_data_dir(server.data_dir)


def remove_data_dir(data_dir: Path) -> None:
    unmount_under(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
