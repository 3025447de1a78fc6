"""A VM's PID 1: start it in fresh namespaces inside its cgroups, tell
whether it still runs, and end it with everything it holds.

The work is done by `arkervm init` (native/init.c); this module decides the
arguments and keeps the proof of identity: a pid alone can be reused after a
crash, so a VM's init is known by (pid, start time from /proc/PID/stat).
PID 1 also runs the VM's commands (native/agent.c); the engine reaches it
through `InitProcess.agent`, one end of a socket pair made here, so only the
engine that started a VM can run anything in it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from arker.engine._cgroups import Cgroups
from arker.engine.base import Limits
from arker.engine.lxcfs import BOUND
from arker.errors import ArkerError, ErrorCode

__all__ = ["InitProcess", "proc_start_time", "start_vm", "stop_vm", "tmp_bytes_for"]

# /tmp is a tmpfs charged to the VM's memory cgroup: were it as large as the
# limit, filling it would leave nothing for PID 1 and the VM's processes (the
# OOM killer would take them). So it gets a share of the limit by default.
TMP_SHARE_OF_MEMORY = 4


def tmp_bytes_for(limits: Limits, tmp_size_bytes: int | None = None) -> int:
    """The size of a VM's /tmp: `tmp_size_bytes` if set, else a quarter of
    its memory limit (never more than the limit)."""
    if tmp_size_bytes is not None:
        return max(1, min(tmp_size_bytes, limits.memory_bytes))
    return max(1 << 20, limits.memory_bytes // TMP_SHARE_OF_MEMORY)


@dataclass(frozen=True)
class InitProcess:
    pid: int
    start_time: int  # clock ticks since boot, field 22 of /proc/PID/stat
    # The channel to PID 1's exec agent; None for an init this process did
    # not start (found after a restart), which can be stopped but not run in.
    agent: socket.socket | None = field(default=None, compare=False, repr=False)

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time


def proc_start_time(pid: int) -> int | None:
    """The start time of a live (not zombie) process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def start_vm(
    helper: Path,
    cgroups: Cgroups,
    vm_id: str,
    root: Path,
    *,
    hostname: str,
    limits: Limits,
    tmp_size_bytes: int | None = None,
    disk: tuple[int, str] | None = None,
    id_base: int | None = None,
    lxcfs: Path | None = None,
) -> InitProcess:
    """Start the VM's PID 1 rooted at `root`; return once its mounts are up.
    With `disk` (its quota in bytes, the host file holding the bytes charged
    to it), statfs in the VM answers with the VM's own size. With `id_base`
    the VM runs in a user namespace whose ids 0-65535 are host ids
    id_base.. (native/userns.c), its root an idmapped mount. With `lxcfs`
    (the mount of lxcfs.py) its /proc shows its own cgroups' limits."""
    cgroups.remove_vm(vm_id)  # whatever an earlier life of this VM left
    procs = cgroups.create_vm(vm_id, limits, owner=id_base)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cmd = [str(helper), "init", "--root", str(root), "--hostname", hostname]
    cmd += ["--tmp-size", str(tmp_bytes_for(limits, tmp_size_bytes)), "--ready-fd", "1"]
    cmd += ["--agent-fd", str(theirs.fileno())]
    for p in procs:
        cmd += ["--cgroup-procs", p]
    for name, path in cgroups.views(vm_id):
        cmd += ["--cgroup-view", f"{name}={path}"]
    if disk is not None:
        cmd += ["--disk-limit", str(disk[0]), "--disk-usage", disk[1]]
    if id_base is not None:
        cmd += ["--id-base", str(id_base)]
    if lxcfs is not None:
        cmd += ["--lxcfs", str(lxcfs)]
        for name in BOUND:
            cmd += ["--lxcfs-file", name]
    try:
        # The launcher prints PID 1's host pid and exits; PID 1 itself is
        # reparented away from us, so it outlives this server.
        # An empty environment: the VM's root could read PID 1's, and the
        # server's may hold secrets.
        done = subprocess.run(
            cmd,
            capture_output=True,
            check=False,
            timeout=30,
            env={},
            pass_fds=(theirs.fileno(),),
        )
    except subprocess.TimeoutExpired as exc:
        ours.close()
        cgroups.remove_vm(vm_id)
        raise ArkerError(ErrorCode.INTERNAL, f"vm {vm_id!r} did not start in 30 s") from exc
    finally:
        theirs.close()
    # A run's request that PID 1 cannot take within this time (it is stuck)
    # fails rather than hangs the engine's thread.
    ours.settimeout(30)
    pid = int(done.stdout) if done.returncode == 0 else 0
    start = proc_start_time(pid) if pid else None
    if start is None:
        ours.close()
        cgroups.remove_vm(vm_id)
        msg = done.stderr.decode(errors="replace").strip() or "PID 1 died as it started"
        raise ArkerError(ErrorCode.INTERNAL, f"cannot start vm {vm_id!r}: {msg}")
    return InitProcess(pid, start, ours)


def stop_vm(cgroups: Cgroups, vm_id: str, init: InitProcess | None = None) -> None:
    """Kill the VM's PID 1 and every process in it, then remove its cgroups.
    Killing PID 1 tears the VM's namespaces and mounts down with it."""
    our_child = init is not None and init.alive() and _ppid(init.pid) == os.getpid()
    cgroups.remove_vm(vm_id)
    if init is not None and init.agent is not None:
        init.agent.close()
    if our_child and init is not None:
        # PID 1 is reparented to the nearest subreaper; when that is this
        # server (a container's PID 1, or a supervisor), nobody else reaps it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(init.pid, 0)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])
