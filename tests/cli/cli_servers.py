"""Real `arker serve` processes for the CLI tests, on the real engine.

Each server gets a fresh data directory with the busybox golden and a fresh
key, listens on a free port, and on stop is sent SIGTERM, has whatever it
left mounted under its data directory unmounted, and its directory removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from arker.cli.demo import embedded_server

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


@dataclass
class LocalServer:
    base_url: str  # with the API prefix
    api_key: str
    data_dir: Path
    stack: ExitStack  # closing it stops the server

    def env(self) -> dict[str, str]:
        """The environment a client of this server needs, and nothing that
        would point it elsewhere."""
        dropped = ("ARKER_REGION", "AUTH_KEY", "ARKER_SOURCE_VM", "ARKER_SMOKE_TARGETS")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(ARKER_API_KEY=self.api_key, ARKER_BASE_URL=self.base_url, COLUMNS="200")
        return env


def _check(proc: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc.stdout


def start_server(data_dir: Path, api_prefix: str = "") -> LocalServer:
    """Golden and key first (the engine's pool takes one process at a time),
    then `arker serve`, started as `arker demo` starts its own."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _check(arker("goldens", "build", "busybox", "--data-dir", str(data_dir)), "goldens build")
    created = _check(arker("keys", "create", "--data-dir", str(data_dir)), "keys create")
    key = created.decode().strip().splitlines()[-1]
    stack = ExitStack()
    stack.callback(remove_data_dir, data_dir)  # runs last: after the server stopped
    log = data_dir.with_name(data_dir.name + ".log")
    try:
        base_url = stack.enter_context(embedded_server(data_dir, log, api_prefix))
    except BaseException:
        stack.close()
        raise
    return LocalServer(base_url, key, data_dir, stack)


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
    server.stack.close()


def remove_data_dir(data_dir: Path) -> None:
    unmount_under(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
