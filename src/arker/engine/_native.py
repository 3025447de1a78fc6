"""Build and locate `arkervm`, the static C helper under `native/`.

It is compiled on first use, once per source version: the binary's name
carries a hash of the sources, so an upgraded engine never runs a stale
helper, and the build goes to a temporary name then is renamed, so engines
starting side by side never see half a binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from arker.errors import ArkerError, ErrorCode

__all__ = ["helper_path", "source_digest"]

NATIVE_DIR = Path(__file__).with_name("native")
_CFLAGS = ["-O2", "-static", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2"]
_lock = threading.Lock()


def _sources() -> list[Path]:
    return sorted(NATIVE_DIR.glob("*.c")) + sorted(NATIVE_DIR.glob("*.h"))


def source_digest() -> str:
    """12 hex digits of sha256 over the helper's sources and flags."""
    h = hashlib.sha256(" ".join(_CFLAGS).encode())
    for src in _sources():
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def helper_path(data_dir: Path) -> Path:
    """Return the helper binary for these sources, compiling it if needed.
    Raises ArkerError(unavailable) when there is no C compiler or it fails."""
    target = Path(data_dir) / "bin" / f"arkervm-{source_digest()}"
    if target.exists():
        return target
    with _lock:
        if target.exists():
            return target
        cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
        if cc is None:
            raise ArkerError(
                ErrorCode.UNAVAILABLE,
                "no C compiler (cc) to build the arkervm helper; install gcc and libc6-dev",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".arkervm-", dir=target.parent)
        os.close(fd)
        try:
            cmd = [cc, *_CFLAGS, "-o", tmp, *(str(s) for s in _sources() if s.suffix == ".c")]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except OSError as exc:
                raise ArkerError(ErrorCode.UNAVAILABLE, f"cannot run {cc}: {exc}") from exc
            if done.returncode != 0:
                raise ArkerError(
                    ErrorCode.UNAVAILABLE,
                    f"building the arkervm helper failed: {done.stderr.strip()[-2000:]}",
                )
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target
