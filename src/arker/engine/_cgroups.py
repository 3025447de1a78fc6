"""This engine's cgroups, on a v1 hybrid host or a pure v2 one.

    hybrid v1 (memory, pids, cpu limits; freeze and kill in the unified tree)
      /sys/fs/cgroup/{memory,pids,cpu,cpuset}/<root>/<vm>  limits, all of the VM
      /sys/fs/cgroup/unified/<root>/<vm>/init            the VM's PID 1
      /sys/fs/cgroup/unified/<root>/<vm>/r-<run_id>      one run's process tree
      /sys/fs/cgroup/unified/<root>/<vm>/p-<pty_id>      one terminal's
    pure v2
      /sys/fs/cgroup/<root>/<vm>                         limits
      /sys/fs/cgroup/<root>/<vm>/{init,r-<run_id>,p-<pty_id>}  leaves

A VM of N CPUs (N = its cpu rounded up) gets a cpuset of N of the host's
CPUs, the least used by this engine's VMs first, beside its CFS quota: its
affinity mask (`nproc`) then agrees with what LXCFS shows from the quota, and
LXCFS reads both only when the cpuset cgroup has the cpu cgroup's path.

`<root>` is named after the data directory, so engines on different data
directories (parallel tests, several engineers) never touch each other's
cgroups. Kills go through `cgroup.kill` of the unified tree: it reaches every
process of a run or VM, double-forked ones too, and unlike the v1 freezer it
cannot hang in FREEZING under a vfork loop (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from arker.engine.base import Limits
from arker.errors import ArkerError, ErrorCode

__all__ = ["Cgroups", "RunCgroup"]

CGROUP_FS = Path("/sys/fs/cgroup")
_CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class RunCgroup:
    # The run's leaf in the unified hierarchy: its process is forked into it
    # (the VM's limit cgroups it inherits from PID 1), and its cgroup.kill
    # ends the run's whole tree.
    leaf: str
    oom_file: str  # where the VM's oom_kill counter is read


class Cgroups:
    """Create, limit, kill and remove the cgroups of one engine's VMs."""

    def __init__(self, data_dir: Path, fs: Path = CGROUP_FS) -> None:
        real = os.path.realpath(data_dir)
        self.name = "arker-" + hashlib.sha256(real.encode()).hexdigest()[:8]
        self.fs = fs
        # The host uid of root in each running VM's user namespace.
        self._owners: dict[str, int] = {}
        self._cpus: dict[str, list[int]] = {}  # the cpuset of each running VM
        self.v2 = (fs / "cgroup.controllers").exists() and not (fs / "memory").is_dir()
        if self.v2:
            self.unified = fs / self.name
            self.limit_roots = {"memory": self.unified, "pids": self.unified, "cpu": self.unified}
        else:
            self.unified = fs / "unified" / self.name
            self.limit_roots = {h: fs / h / self.name for h in ("memory", "pids", "cpu")}
            if (fs / "cpuset" / "cpuset.cpus").exists():
                self.limit_roots["cpuset"] = fs / "cpuset" / self.name
            if (
                not (fs / "unified" / "cgroup.kill").exists()
                and not (fs / "unified" / "cgroup.procs").exists()
            ):
                raise ArkerError(ErrorCode.UNAVAILABLE, "no cgroup v2 (unified) hierarchy")

    # -- paths
    def _limit_dirs(self, vm_id: str) -> list[Path]:
        if self.v2:
            return [self.unified / vm_id]
        return [root / vm_id for root in self.limit_roots.values()]

    def _oom_file(self, vm_id: str) -> str:
        if self.v2:
            return str(self.unified / vm_id / "memory.events")
        return str(self.limit_roots["memory"] / vm_id / "memory.oom_control")

    def _join(self, vm_id: str, leaf: str) -> list[str]:
        procs = [] if self.v2 else [str(d / "cgroup.procs") for d in self._limit_dirs(vm_id)]
        return [*procs, str(self.unified / vm_id / leaf / "cgroup.procs")]

    # -- VMs
    def create_vm(self, vm_id: str, limits: Limits, owner: int | None = None) -> list[str]:
        """Make the VM's cgroups with its limits; return the cgroup.procs files
        its PID 1 joins. With `owner` (the host uid of root in the VM's user
        namespace), PID 1 may fork runs into the VM's leaves: the kernel asks
        for write access to the cgroup.procs of the VM's unified cgroup, the
        leaves' common ancestor, and for that of each leaf (create_run,
        create_pty). Nothing else is delegated: the limits stay
        the host's, and no cgroup file system is mounted in a VM."""
        if self.v2:
            self.unified.mkdir(exist_ok=True)
            _enable_controllers(self.fs)
            _enable_controllers(self.unified)
        elif "cpuset" in self.limit_roots:
            _inherit_cpuset(self.limit_roots["cpuset"])
        for d in self._limit_dirs(vm_id):
            d.parent.mkdir(exist_ok=True)
            d.mkdir(exist_ok=True)
        (self.unified / vm_id).mkdir(parents=True, exist_ok=True)
        (self.unified / vm_id / "init").mkdir(exist_ok=True)
        if owner is not None:
            os.chown(self.unified / vm_id / "cgroup.procs", owner, owner)
            self._owners[vm_id] = owner
        self._set_limits(vm_id, limits)
        return self._join(vm_id, "init")

    def _set_limits(self, vm_id: str, limits: Limits) -> None:
        mem, pids = str(limits.memory_bytes), str(limits.pids_max)
        quota = max(1000, math.ceil(limits.cpu_cores * _CPU_PERIOD_US))
        if self.v2:
            d = self.unified / vm_id
            _write(d / "memory.max", mem)
            _write(d / "memory.swap.max", "0", optional=True)
            _write(d / "pids.max", pids)
            _write(d / "cpu.max", f"{quota} {_CPU_PERIOD_US}")
            if (d / "cpuset.cpus").exists():
                _write(d / "cpuset.cpus", self._pick_cpus(vm_id, limits, d.parent))
            return
        m = self.limit_roots["memory"] / vm_id
        _write(m / "memory.limit_in_bytes", mem)
        # memsw = limit means no swap; it must never be set below the limit.
        _write(m / "memory.memsw.limit_in_bytes", mem, optional=True)
        _write(self.limit_roots["pids"] / vm_id / "pids.max", pids)
        c = self.limit_roots["cpu"] / vm_id
        _write(c / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
        _write(c / "cpu.cfs_quota_us", str(quota))
        if "cpuset" in self.limit_roots:
            d = self.limit_roots["cpuset"] / vm_id
            _write(d / "cpuset.mems", (d.parent / "cpuset.mems").read_text().strip())
            _write(d / "cpuset.cpus", self._pick_cpus(vm_id, limits, d.parent))

    def _pick_cpus(self, vm_id: str, limits: Limits, parent: Path) -> str:
        """N CPUs of those `parent` has, the ones fewest of this engine's
        running VMs hold first (a VM of 1 CPU next to another lands on the
        other CPU), as a cpuset list."""
        names = ("cpuset.effective_cpus", "cpuset.cpus.effective", "cpuset.cpus")  # v1, v2
        have = _cpu_list(next(filter(None, (_read(parent / n) for n in names)), ""))
        have = have or list(range(os.cpu_count() or 1))
        want = max(1, min(len(have), math.ceil(limits.cpu_cores)))
        use = dict.fromkeys(have, 0)
        for held in self._cpus.values():
            for cpu in held:
                if cpu in use:
                    use[cpu] += 1
        picked = sorted(sorted(have, key=lambda c: (use[c], c))[:want])
        self._cpus[vm_id] = picked
        return ",".join(map(str, picked))

    def cpus(self, vm_id: str) -> list[int] | None:
        """The CPUs of the VM's cpuset, or None when it has none (stopped)."""
        return self._cpus.get(vm_id)

    def views(self, vm_id: str) -> list[tuple[str, str]]:
        """(name under the VM's /sys/fs/cgroup, host directory) of the VM's
        own cgroups, which it sees read-only: its memory.limit_in_bytes,
        cpu.cfs_quota_us, cpuset.cpus, pids.max (memory.max, cpu.max on v2)."""
        if self.v2:
            return [(".", str(self.unified / vm_id))]
        views = [(h, str(root / vm_id)) for h, root in self.limit_roots.items()]
        return [*views, ("unified", str(self.unified / vm_id))]

    def create_run(self, vm_id: str, run_id: str) -> RunCgroup:
        # Strings, not Paths: this is on every run's path.
        leaf = f"{self.unified}/{vm_id}/r-{run_id}"
        with contextlib.suppress(FileExistsError):
            os.mkdir(leaf)
        self._delegate(vm_id, leaf)
        return RunCgroup(leaf, self._oom_file(vm_id))

    def _delegate(self, vm_id: str, leaf: str) -> None:
        owner = self._owners.get(vm_id)
        if owner is not None:
            os.chown(f"{leaf}/cgroup.procs", owner, owner)

    def kill_run(self, vm_id: str, run_id: str) -> None:
        _kill(self.unified / vm_id / f"r-{run_id}")

    def create_pty(self, vm_id: str, pty_id: str) -> RunCgroup:
        """A terminal's leaf: `p-`, which `sweep_runs` leaves alone."""
        leaf = f"{self.unified}/{vm_id}/p-{pty_id}"
        os.mkdir(leaf)
        self._delegate(vm_id, leaf)
        return RunCgroup(leaf, self._oom_file(vm_id))

    def remove_pty(self, vm_id: str, pty_id: str, timeout_s: float = 2.0) -> None:
        """Kill a terminal's tree and remove its leaf once empty (a leaf that
        does not empty in time goes with its VM)."""
        leaf = self.unified / vm_id / f"p-{pty_id}"
        _kill(leaf)
        deadline = time.monotonic() + timeout_s
        while _populated(leaf) and time.monotonic() < deadline:
            time.sleep(0.002)
        _rmdir(leaf)

    def sweep_runs(self, vm_id: str, keep: set[str]) -> None:
        """Remove the leaves of runs that ended and left nothing running."""
        try:
            leaves = os.listdir(self.unified / vm_id)
        except FileNotFoundError:
            return
        for leaf in leaves:
            if leaf.startswith("r-") and leaf[2:] not in keep:
                _rmdir(self.unified / vm_id / leaf)

    def memory_bytes(self, vm_id: str) -> int:
        name = "memory.current" if self.v2 else "memory.usage_in_bytes"
        return int((self.limit_roots["memory"] / vm_id / name).read_text())

    def memory_limit(self, vm_id: str) -> int | None:
        """The VM's memory limit in bytes, or None (no limit, or stopped)."""
        name = "memory.max" if self.v2 else "memory.limit_in_bytes"
        value = _read(self.limit_roots["memory"] / vm_id / name)
        return int(value) if value.isdigit() else None

    def pids_hits(self, vm_id: str) -> int:
        """How many forks the VM's pids limit has refused (one read: it is on
        every run's start)."""
        try:
            with open(f"{self.limit_roots['pids']}/{vm_id}/pids.events") as f:
                events = f.read().split()
        except FileNotFoundError:
            return 0
        return int(events[events.index("max") + 1]) if "max" in events else 0

    def pids(self, vm_id: str) -> tuple[int, int, int] | None:
        """(pids.current, pids.max, times a fork failed at the max) of the
        VM, or None when it has no pids cgroup (stopped) or no limit."""
        d = f"{self.limit_roots['pids']}/{vm_id}"
        try:
            with open(f"{d}/pids.current") as f:
                current = int(f.read())
            with open(f"{d}/pids.max") as f:
                limit = f.read().strip()
            with open(f"{d}/pids.events") as f:
                events = f.read().split()
        except (FileNotFoundError, ValueError):
            return None
        if limit == "max":
            return None
        hits = int(events[events.index("max") + 1]) if "max" in events else 0
        return current, int(limit), hits

    def vm_ids(self) -> list[str]:
        """VMs that have a cgroup in any hierarchy of this engine."""
        found: set[str] = set()
        for root in {self.unified, *self.limit_roots.values()}:
            if root.is_dir():
                found.update(p.name for p in root.iterdir() if p.is_dir())
        return sorted(found)

    def remove_vm(self, vm_id: str, timeout_s: float = 10.0) -> None:
        """Kill every process of the VM, wait until none is left, remove its
        cgroups (leaves first). Missing cgroups are fine."""
        top = self.unified / vm_id
        self._owners.pop(vm_id, None)
        self._cpus.pop(vm_id, None)
        _kill(top)
        if not self.v2:
            for d in self._limit_dirs(vm_id):
                _kill_procs(d)  # anything that slipped out of the unified tree
        deadline = time.monotonic() + timeout_s
        dirs = [*self._limit_dirs(vm_id), top] if not self.v2 else [top]
        while any(_populated(d) for d in dirs):
            if time.monotonic() > deadline:
                raise ArkerError(ErrorCode.INTERNAL, f"processes of vm {vm_id!r} did not die")
            time.sleep(0.002)
        if top.is_dir():
            for leaf in os.listdir(top):
                if (top / leaf).is_dir():
                    _rmdir(top / leaf, strict=True)
        for d in dict.fromkeys([top, *self._limit_dirs(vm_id)]):
            _rmdir(d, strict=True)

    def remove_all(self) -> None:
        """Remove every VM's cgroups and this engine's roots (after a crash)."""
        for vm_id in self.vm_ids():
            self.remove_vm(vm_id)
        for root in {self.unified, *self.limit_roots.values()}:
            _rmdir(root)


def _write(path: Path, value: str, optional: bool = False) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        if not optional:
            raise
    except OSError as exc:
        raise ArkerError(ErrorCode.INTERNAL, f"cannot write {value!r} to {path}: {exc}") from exc


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _cpu_list(text: str) -> list[int]:
    """`0-3,8` as [0, 1, 2, 3, 8]."""
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _inherit_cpuset(root: Path) -> None:
    """A v1 cpuset cgroup starts with no CPUs and no memory nodes, and takes
    no process until given some: the engine's root gets all its parent's."""
    root.mkdir(exist_ok=True)
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read(root / name):
            _write(root / name, _read(root.parent / name))


def _enable_controllers(d: Path) -> None:
    have = (d / "cgroup.subtree_control").read_text().split()
    optional = [] if "cpuset" in _read(d / "cgroup.controllers").split() else ["cpuset"]
    want = [c for c in ("memory", "pids", "cpu", "cpuset") if c not in have + optional]
    if want:
        _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in want))


def _kill(d: Path) -> None:
    try:
        with open(d / "cgroup.kill", "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass


def _kill_procs(d: Path) -> None:
    try:
        pids = (d / "cgroup.procs").read_text().split()
    except FileNotFoundError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)


def _populated(d: Path) -> bool:
    try:
        events = (d / "cgroup.events").read_text()
    except FileNotFoundError:
        try:  # v1 has no cgroup.events: look at its processes
            return bool((d / "cgroup.procs").read_text().strip())
        except FileNotFoundError:
            return False
    return "populated 1" in events


def _rmdir(d: Path, strict: bool = False) -> None:
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if strict or exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise ArkerError(ErrorCode.INTERNAL, f"cannot remove cgroup {d}: {exc}") from exc
