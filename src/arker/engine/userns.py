"""Host id ranges for VMs' user namespaces, and whether this host can idmap.

Each VM's uid/gid 0-65535 are 65,536 host ids of its own, from FIRST_ID on
in steps of RANGE (native/userns.c maps them). A range belongs to one VM for
its whole life: the engine records it in the VM's state, and a claim file

    /run/arker/ids/<first host id>    holding the VM's state file path

makes it the host's, so engines side by side (other data dirs) never hand
the same ids to two VMs. Deleting the VM frees it. A claim whose state file
is gone (a data dir removed with its VMs) is stale and taken again. Files on
disk keep the ids the VM sees (the mount is idmapped), so which range runs a
VM changes nothing in its files: a range lost with /run at a reboot is
simply claimed again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["FIRST_ID", "RANGE", "IdRanges", "idmap_unsupported"]

RANGE = 65536
FIRST_ID = 1 << 30  # far above any host account, below the 32-bit end
SLOTS = ((1 << 32) - 2 - FIRST_ID) // RANGE
CLAIM_DIR = Path("/run/arker/ids")
# A claim is written just before its VM's state: never steal one this young.
_STALE_AFTER_S = 60.0


class IdRanges:
    """Claim, keep and free host id ranges for one engine's VMs."""

    def __init__(self, claim_dir: Path = CLAIM_DIR) -> None:
        self.claim_dir = claim_dir
        self._lock = threading.Lock()
        self._next = 0  # lowest slot that may be free: a cursor, not a promise
        self._made = False  # the claim dir exists (made once: forks pay no mkdir)

    def claim(self, owner: Path, want: int | None = None) -> int:
        """The first host id of a range for the VM whose state file is
        `owner`: `want` if it is still its own or free, else the lowest free."""
        with self._lock:
            if not self._made:
                self.claim_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._made = True
            if want is not None and self._take(want, owner):
                return want
            for slot in range(self._next, SLOTS):
                base = FIRST_ID + slot * RANGE
                if self._take(base, owner):
                    self._next = slot + 1
                    return base
        raise OSError(errno.ENOSPC, "no free host id range for a vm")

    def release(self, base: int, owner: Path) -> None:
        """Free the range if `owner` holds it."""
        path = self.claim_dir / str(base)
        with self._lock:
            if _holder(path) == str(owner):
                path.unlink(missing_ok=True)
            slot = (base - FIRST_ID) // RANGE
            self._next = min(self._next, max(0, slot))

    def _take(self, base: int, owner: Path) -> bool:
        path = self.claim_dir / str(base)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            holder = _holder(path)
            if holder == str(owner):
                return True
            if holder is None or Path(holder).exists() or _young(path):
                return False
            path.unlink(missing_ok=True)  # stale: its VM's state is gone
            return self._take(base, owner)
        try:
            os.write(fd, os.fsencode(owner))
        finally:
            os.close(fd)
        return True


def _holder(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _young(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < _STALE_AFTER_S
    except FileNotFoundError:
        return False


def idmap_unsupported(helper: Path, path: Path) -> str | None:
    """None if VMs rooted under `path` can run in user namespaces with an
    idmapped root here, else why not (the kernel's answer)."""
    done = subprocess.run(
        [str(helper), "probe-idmap", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={},
    )
    if done.returncode == 0:
        return None
    return done.stderr.strip() or f"the probe exited with {done.returncode}"
