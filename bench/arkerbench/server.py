"""A real `arker serve` for the benchmark: a fresh data directory, the busybox
golden built through the CLI, a new key, a free port; on exit SIGTERM, any
mount left under the directory undone, and the directory removed.

Only the one server process started here is ever signalled (by its pid).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from arker.cli.demo import embedded_server

__all__ = ["LocalServer", "local_server"]

# This interpreter's arker, whether or not `arker` is on the PATH.
ARKER = [sys.executable, "-c", "from arker.cli import main; main()"]


@dataclass(frozen=True)
class LocalServer:
    base_url: str
    api_key: str
    data_dir: Path


def _arker(*args: str) -> str:
    done = subprocess.run(
        [*ARKER, *args], capture_output=True, stdin=subprocess.DEVNULL, timeout=600, check=False
    )
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"arker {' '.join(args)} failed ({done.returncode}): {err}")
    return done.stdout.decode()


def _unmount_under(path: Path) -> None:
    """Unmount what a server that died hard left below `path` (its pool image)."""
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    inside = [p for p in points if p == prefix or p.startswith(prefix + "/")]
    for point in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@contextmanager
def local_server(
    log: Path, parent_dir: Path | None = None, serve_args: Sequence[str] = ()
) -> Iterator[LocalServer]:
    """A server (`arker serve` with `serve_args` added) on a fresh data
    directory made inside `parent_dir` (default: the system temp dir), logging
    to `log`; everything but the log is undone when the block ends."""
    data_dir = Path(tempfile.mkdtemp(prefix="arker-bench-", dir=parent_dir)).resolve()
    try:
        # Golden and key first: the engine's pool is held by one process at a time.
        _arker("goldens", "build", "busybox", "--data-dir", str(data_dir))
        api_key = _arker("keys", "create", "--data-dir", str(data_dir)).strip().splitlines()[-1]
        # Started, awaited and stopped (SIGTERM to its pid) as `arker demo` does it.
        with embedded_server(data_dir, log, serve_args=serve_args) as base_url:
            yield LocalServer(base_url, api_key, data_dir)
    finally:
        _unmount_under(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
