"""The engine's LXCFS daemon: one FUSE file system for all of its VMs that
answers /proc/meminfo, /proc/cpuinfo, ... with the reading process's own
cgroup limits, so `free`, `nproc`-style probes and runtimes that size
themselves (the JVM, Node, `make -j`) see the VM's size, not the host's.

    <data_dir>/lxcfs/mnt         its mount point; each VM's PID 1 binds the
                                 files of BOUND over its own /proc (native/init.c)
    <data_dir>/lxcfs/pid         its pid, for a restarted engine to end the
                                 daemon an earlier life left running

The daemon ends with the engine, even with one that was killed (its
parent-death signal): a restarted engine kills every VM anyway. It is
supervised: if it dies, the VMs keep running (their bound
files answer ENOTCONN, as a dead FUSE mount does; VMs started after the
restart see their size again), `alive()` is False until it is back, and
it is started again after a pause that doubles, up to a minute, while it keeps
dying. Once it is back, `on_restart` gives the running VMs its new files
(`arkervm lxcfs-attach`, native/lxcfs.c). Without the `lxcfs` program, VMs
see the host's figures and the server says so once at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["BOUND", "Lxcfs"]

log = logging.getLogger(__name__)

# What of the mount a VM gets, over the same path under its root. /proc/swaps
# and /proc/diskstats show the VM's own (none, its cgroup's I/O), and
# /sys/.../cpu/online the CPUs glibc's get_nprocs counts (os.cpu_count()).
BOUND = (
    "proc/meminfo",
    "proc/cpuinfo",
    "proc/stat",
    "proc/uptime",
    "proc/loadavg",
    "proc/diskstats",
    "proc/swaps",
    "sys/devices/system/cpu/online",
)
READY_TIMEOUT_S = 10.0
FIRST_RESTART_S = 1.0
MAX_RESTART_S = 60.0


class Lxcfs:
    """Start, watch and stop one lxcfs daemon (`lxcfs -f -l --enable-cfs`)."""

    def __init__(self, data_dir: Path, program: str | None = None) -> None:
        self.dir = data_dir / "lxcfs"
        self.mount = self.dir / "mnt"
        self._pidfile = self.dir / "pid"
        self._program = program or shutil.which("lxcfs")
        self._proc: subprocess.Popen[bytes] | None = None
        self._up = False  # mounted and answering
        self._closing = threading.Event()
        self._ready = threading.Event()  # the first start is done (up or not)
        self._watcher: threading.Thread | None = None
        self._lock = threading.RLock()
        self.restarts = 0
        # Called (in the watcher thread) each time the daemon is back after
        # dying: the engine gives its running VMs the new files.
        self.on_restart: Callable[[Path], None] | None = None

    @property
    def available(self) -> bool:
        return self._program is not None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def alive(self) -> bool:
        """The daemon runs and its files answer."""
        proc = self._proc
        return self._up and proc is not None and proc.poll() is None

    def root(self) -> Path | None:
        """The mount whose files a VM starting now should bind, or None
        (no lxcfs here, or it is down: the VM then sees the host's figures)."""
        return self.mount if self.alive() else None

    # -- lifecycle
    def open(self) -> None:
        """Start the daemon (ending one an earlier life of this engine left)
        and its watcher. Without the program: a warning, and nothing."""
        if self._program is None:
            log.warning(
                "lxcfs is not installed: vms see the host's cpus and memory in /proc "
                "(install the lxcfs package)"
            )
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._end_leftover()
        self._closing.clear()
        self._ready.clear()
        self._watcher = threading.Thread(target=self._watch, name="lxcfs-watch", daemon=True)
        self._watcher.start()
        self._ready.wait(READY_TIMEOUT_S + 1)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            proc, self._proc, self._up = self._proc, None, False
        if proc is not None:
            _end(proc)
        if self._watcher is not None:
            self._watcher.join(timeout=10)
            self._watcher = None
        _detach(self.mount)
        self._pidfile.unlink(missing_ok=True)

    def _start(self) -> None:
        assert self._program is not None
        _detach(self.mount)  # what a dead daemon left: ENOTCONN to all
        self.mount.mkdir(exist_ok=True)
        argv = [self._program, "-f", "-l", "--enable-cfs", "-p", str(self._pidfile)]
        # It ends with the engine, even one killed: a restarted engine kills
        # every VM anyway, and a daemon left behind would hold a mount in the
        # data dir. The parent-death signal follows the thread that started
        # it, the watcher, which lives as long as the engine is open.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            argv = [setpriv, "--pdeathsig", "TERM", *argv]
        # Its own session: a ^C to the server's terminal is not for it.
        proc = subprocess.Popen(
            [*argv, str(self.mount)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        with self._lock:
            self._proc = proc
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers(self.mount):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.warning(
                    "lxcfs did not start (exit %s): vms see the host's figures", proc.poll()
                )
                return
            time.sleep(0.01)
        self._up = True

    def _watch(self) -> None:
        """Start the daemon, wait for it to die, start it again; until close."""
        pause = FIRST_RESTART_S
        while not self._closing.is_set():
            with self._lock:
                if self._closing.is_set():
                    return
                self._start()
            self._ready.set()
            if self.restarts and self._up and self.on_restart is not None:
                try:
                    self.on_restart(self.mount)
                except Exception:  # the daemon is fine; the VMs keep what they have
                    log.exception("re-attaching lxcfs in running vms failed")
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if self._closing.is_set():
                return
            self._up = False
            log.warning(
                "lxcfs (pid %d) exited with %s: vms keep running; starting it again in %.0f s",
                proc.pid, code, pause,
            )  # fmt: skip
            if time.monotonic() - started > MAX_RESTART_S:
                pause = FIRST_RESTART_S  # it had lived a while: not a crash loop
            if self._closing.wait(pause):
                return
            pause = min(pause * 2, MAX_RESTART_S)
            self.restarts += 1

    def _end_leftover(self) -> None:
        """The daemon of an engine that crashed on this data dir, found by its
        pidfile and checked by its command line (a pid can be reused)."""
        try:
            pid = int(self._pidfile.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return
        if str(self.mount).encode() in argv and any(a.endswith(b"lxcfs") for a in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _answers(mount: Path) -> bool:
    try:
        with open(mount / "proc" / "uptime", "rb") as f:
            return bool(f.read(64))
    except OSError:
        return False


def _end(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (lxcfs then unmounts itself), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _detach(mount: Path) -> None:
    """Lazily unmount whatever is at `mount` (a live or dead FUSE mount)."""
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split()[4] == str(mount) for line in f)
    if mounted:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
