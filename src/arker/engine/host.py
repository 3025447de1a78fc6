"""The namespace engine: one host's VMs as btrfs subvolumes (pool) run by a
namespaced PID 1 each (jail), which also starts their commands (runner).

    <data_dir>/pool...                 the storage pool (pool.py)
    <data_dir>/bin/arkervm-<hash>      the helper, built on first use
    <data_dir>/state/<vm_id>.json      hostname, limits, network policy, PID 1
                                       (pid, start time)

A VM with egress gets a veth into its network namespace when it starts
(net.py); its DNS and, with an allow-list, its TCP 80/443 go to the engine's
forwarder and proxy (egress/).

Runs live in memory (runner.py): a restart of the engine kills every VM, and
the server recovers runs from its own records.

A VM starts on its first run and runs until stopped; `power` is read from
the live process table, never trusted from the state file alone, so a crash
of the server can leave nothing that looks alive but is not.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO, Literal

from arker.engine import _btrfs, _native, _netns, archive, files, fs, jail, pty, userns
from arker.engine._cgroups import Cgroups
from arker.engine.base import (
    ArchiveReader,
    DirListing,
    Engine,
    FileInfo,
    FileWriter,
    FsEntry,
    GoldenInfo,
    Limits,
    NetworkPolicy,
    OutputChunk,
    Progress,
    RunInfo,
    RunSpec,
    Unpacked,
    VmPower,
    port_closed,
)
from arker.engine.egress.policy import Policy, parse_allow
from arker.engine.egress.services import EgressServices
from arker.engine.lxcfs import BOUND, Lxcfs
from arker.engine.net import Network
from arker.engine.pool import Pool, check_name
from arker.engine.pty import Pty
from arker.engine.runner import Runner
from arker.errors import ArkerError, ErrorCode

__all__ = ["NamespaceEngine"]

log = logging.getLogger(__name__)

# A connect inside the VM's own loopback is refused or accepted at once; this
# bounds only a listener whose backlog is full.
CONNECT_TIMEOUT_S = 5.0

_NOT_IN_HOSTNAME = re.compile(r"[^A-Za-z0-9.-]+")


def _hostname(name: str) -> str:
    """The VM name made a valid hostname: VM names are free text, and a VM
    should start whatever its name ("My VM_1" runs as "My-VM-1")."""
    cleaned = _NOT_IN_HOSTNAME.sub("-", name).strip("-.")[:63].rstrip("-.")
    return cleaned or "vm"


class NamespaceEngine(Engine):
    """Linux namespaces + cgroups + seccomp over a btrfs pool."""

    kind = "namespace"
    supports_checkpoints = True

    def __init__(
        self,
        data_dir: Path | str = "/var/lib/arker",
        *,
        image_size_bytes: int = 64 * 2**30,
        default_limits: Limits = Limits(),  # noqa: B008 - frozen, so sharing is safe
        tmp_size_bytes: int | None = None,  # None: a quarter of each VM's memory limit
        pool_reserve_bytes: int = 0,
        networking: bool = True,  # False: every VM has loopback only
        user_namespaces: bool = True,  # False: root in a VM is host root, as before
        lxcfs: bool = True,  # False: VMs see the host's cpus and memory in /proc
    ) -> None:
        self.data_dir = Path(data_dir)
        self.default_limits = default_limits
        self.tmp_size_bytes = tmp_size_bytes
        self.pool = Pool(
            self.data_dir, image_size_bytes=image_size_bytes, reserve_bytes=pool_reserve_bytes
        )
        self.cgroups = Cgroups(self.data_dir)
        self.state_dir = self.data_dir / "state"
        self._runner: Runner | None = None
        self._helper: Path  # the arkervm binary VMs' PID 1 runs; set by open()
        self._live: dict[str, jail.InitProcess] = {}  # the inits this engine started
        self._locks: dict[str, threading.RLock] = {}
        self._locks_lock = threading.Lock()
        self._networking = networking
        self.net: Network | None = None  # set by open() when networking works here
        self._policies: dict[str, NetworkPolicy] = {}  # of running VMs with a link
        self._by_address: dict[str, Policy] = {}  # the same, by VM address, for egress/
        self._egress: EgressServices | None = None
        self._want_userns = user_namespaces
        self.userns = False  # set by open(): wanted, and this kernel can idmap the pool
        self._ids = userns.IdRanges()
        # What shows each VM its own size in /proc (lxcfs.py); None: off.
        self.lxcfs: Lxcfs | None = Lxcfs(self.data_dir) if lxcfs else None
        if self.lxcfs is not None:
            self.lxcfs.on_restart = self._reattach_lxcfs

    # -- lifecycle
    def open(self) -> None:
        if self._runner is not None:
            return  # already open: reconciling now would kill live VMs
        self.pool.open()
        try:
            self._helper = _native.helper_path(self.data_dir)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._runner = Runner(self.cgroups)
            self._open_userns()
            self._reconcile()
            if self.lxcfs is not None:
                self.lxcfs.open()
            if self._networking:
                self._open_network()
        except BaseException:
            self._close_network()
            if self.lxcfs is not None:
                self.lxcfs.close()
            self.pool.close()
            raise

    def _reconcile(self) -> None:
        """Make what a crash left behind consistent: every VM process is
        killed (with the runs in flight) and every VM is stopped but usable."""
        shutil.rmtree(self.data_dir / "runs", ignore_errors=True)  # older engines' spools
        self.cgroups.remove_all()
        _detach_mounts_under(self.pool.root / "vms")
        stored = set(self.pool.vm_ids())
        for state in self.state_dir.glob("*.json"):
            vm_id = state.stem
            if vm_id not in stored:
                state.unlink()
            else:
                self._save(vm_id, {**self._load(vm_id), "init": None})

    def _open_userns(self) -> None:
        if not self._want_userns:
            return
        why = userns.idmap_unsupported(self._helper, self.pool.root / "vms")
        if why is not None:
            log.warning(
                "vms run without user namespaces (root in a vm is host root): this kernel "
                "cannot idmap the pool (%s)",
                why,
            )
        self.userns = why is None
        if self.userns and not _btrfs.host_safe(self.pool.root):
            log.warning(
                "the pool %s is not mounted nosuid,nodev: setuid files and device nodes "
                "made by root in a vm would be live on the host; remount it so",
                self.pool.root,
            )

    def close(self) -> None:
        if self._runner is not None:
            for vm_id in self.vm_ids():
                self.stop(vm_id)
            self.cgroups.remove_all()
            self._runner = None
        if self.lxcfs is not None:
            self.lxcfs.close()  # after the VMs: they read its files to the end
        self._close_network()
        self.pool.close()

    def _open_network(self) -> None:
        """The forwarder and proxy first (on free ports of every address: the
        table answers them only to VMs), then the table that sends VMs there."""
        egress = EgressServices(self._by_address.get)
        ports = egress.start(("0.0.0.0", 0), ("0.0.0.0", 0))
        net = Network(dns_port=ports.dns, proxy_port=ports.proxy)
        try:
            net.open()
        except ArkerError as exc:
            egress.stop()
            log.warning("vms get no network on this host: %s", exc.message)
            return
        self._egress, self.net = egress, net

    def _close_network(self) -> None:
        if self.net is not None:
            self.net.close()
            self.net = None
        if self._egress is not None:
            self._egress.stop()
            self._egress = None
        self._policies.clear()
        self._by_address.clear()

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            raise ArkerError(ErrorCode.UNAVAILABLE, "the engine is not open")
        return self._runner

    # -- goldens
    def goldens(self) -> list[GoldenInfo]:
        return self.pool.goldens()

    def build_golden(self, name: str, progress: Progress | None = None) -> GoldenInfo:
        from arker.engine import goldens

        if self.pool.has_golden(name):
            return next(g for g in self.pool.goldens() if g.name == name)
        build = goldens.KNOWN_GOLDENS.get(name)
        if build is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"no known golden {name!r}")
        return build(self.pool, progress)

    def import_golden(
        self,
        name: str,
        tarball: str,
        progress: Progress | None = None,
        *,
        description: str | None = None,
        require_shell: bool = False,
    ) -> GoldenInfo:
        from arker.engine import goldens

        return goldens.import_tarball(
            self.pool, name, Path(tarball), progress, description, require_shell=require_shell
        )

    def publish_golden(self, vm_id: str, name: str, description: str | None = None) -> GoldenInfo:
        return self.pool.publish_golden(vm_id, name, description)

    def delete_golden(self, name: str) -> None:
        self.pool.delete_golden(name)

    # -- VMs
    def fork(
        self,
        source: str,
        vm_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> None:
        check_name(vm_id, "vm id")
        with self._lock(vm_id):
            limits = limits or self.default_limits
            # conflict if vm_id exists: the snapshot says EEXIST
            self.pool.fork(source, vm_id, disk_bytes=limits.disk_bytes)
            self._adopt(vm_id, hostname, limits, network)

    def _adopt(
        self, vm_id: str, hostname: str, limits: Limits, network: NetworkPolicy | None
    ) -> None:
        """Write the state of a VM whose files were just made."""
        state: dict[str, Any] = {
            "hostname": _hostname(hostname), "limits": asdict(limits), "init": None,
        }  # fmt: skip
        if self.userns:
            # The range is the VM's from now until its delete: a restart
            # of the server finds it in the state.
            state["id_base"] = self._ids.claim(self._state_path(vm_id))
        self._save(vm_id, {**state, "network": (network or NetworkPolicy()).as_dict()})

    def set_network(self, vm_id: str, network: NetworkPolicy) -> None:
        self._require(vm_id)
        with self._lock(vm_id):
            self._save(vm_id, {**self._load(vm_id), "network": network.as_dict()})
            init = self._init(vm_id)
            if init is None:
                return  # it takes effect when the VM starts
            had = self._policies.get(vm_id)
            if had is None:
                self._attach(vm_id, init, network)
            elif not network.egress:
                self._detach(vm_id, delete_link=True)
            else:
                assert self.net is not None
                self.net.set_allow(vm_id, _cidrs(network))
                self._policies[vm_id] = network
                link = self.net.link(vm_id)
                if link is not None:
                    self._by_address[link.address] = _egress_policy(network)

    def check_storage(self) -> None:
        self.pool.check_storage()

    def storage_delete_pending(self) -> int:
        return self.pool.delete_pending()

    def disk_usage(self, vm_id: str) -> tuple[int, str] | None:
        self._require(vm_id)
        return self._disk(vm_id, self._load(vm_id))

    def _disk(self, vm_id: str, state: dict[str, Any]) -> tuple[int, str] | None:
        limit = state["limits"].get("disk_bytes")
        usage = self.pool.vm_disk_usage_file(vm_id) if limit is not None else None
        if limit is None or usage is None:
            return None
        return int(limit), str(usage)

    def delete(self, vm_id: str) -> None:
        check_name(vm_id, "vm id")
        with self._lock(vm_id):
            self._kill(vm_id, "the vm was deleted")
            self.runner.forget_vm(vm_id)
            self.pool.delete_vm(vm_id)
            id_base = self._load(vm_id).get("id_base")
            if id_base is not None:  # only now, with its files gone, may it be reused
                self._ids.release(int(id_base), self._state_path(vm_id))
            self._state_path(vm_id).unlink(missing_ok=True)
        with self._locks_lock:
            self._locks.pop(vm_id, None)

    def vm_ids(self) -> list[str]:
        return self.pool.vm_ids()

    def power(self, vm_id: str) -> VmPower:
        self._require(vm_id)
        return VmPower.RUNNING if self._init(vm_id) is not None else VmPower.STOPPED

    def stop(self, vm_id: str) -> None:
        self._require(vm_id)
        with self._lock(vm_id):
            self._kill(vm_id, "the vm was stopped")
            self._save(vm_id, {**self._load(vm_id), "init": None})

    def restart(self, vm_id: str) -> None:
        self._require(vm_id)
        with self._lock(vm_id):
            self._kill(vm_id, "the vm was restarted")
            self._save(vm_id, {**self._load(vm_id), "init": None})
            self._start(vm_id)

    def start(self, vm_id: str) -> None:
        """Start the VM now rather than on its first run (no-op if running)."""
        self._require(vm_id)
        with self._lock(vm_id):
            self._start(vm_id)

    def _kill(self, vm_id: str, reason: str) -> None:
        """Stop the VM's PID 1 and all its processes; runs in flight fail
        with `reason` rather than look like commands that died by SIGKILL."""
        self.runner.end_vm(vm_id, reason)
        jail.stop_vm(self.cgroups, vm_id, self._init(vm_id))
        self._live.pop(vm_id, None)
        # The kernel deletes the pair with the namespace: no 20 ms delete here.
        self._detach(vm_id, delete_link=False)

    def _start(self, vm_id: str) -> jail.InitProcess:
        """The VM's live PID 1, started now if the VM is stopped."""
        init = self._init(vm_id)
        if init is not None and init.agent is not None:
            return init
        if init is not None:  # alive, but not ours to run in: cannot happen after
            self._kill(vm_id, "the vm was restarted")  # open() reconciled; be safe
        state = self._load(vm_id)
        id_base = self._id_base(vm_id, state) if self.userns else None
        init = jail.start_vm(
            self._helper,
            self.cgroups,
            vm_id,
            self.pool.vm_path(vm_id),
            hostname=state["hostname"],
            limits=Limits(**state["limits"]),
            tmp_size_bytes=self.tmp_size_bytes,
            disk=self._disk(vm_id, state),  # the state just loaded, not read again
            id_base=id_base,
            lxcfs=self.lxcfs.root() if self.lxcfs is not None else None,
        )
        self._save(vm_id, {**state, "init": [init.pid, init.start_time]})
        self._live[vm_id] = init
        policy = NetworkPolicy.from_dict(state.get("network"))
        if policy.egress:
            try:
                self._attach(vm_id, init, policy)
            except BaseException:
                self._kill(vm_id, "the vm could not get its network")
                raise
        return init

    def _reattach_lxcfs(self, mount: Path) -> None:
        """lxcfs came back after dying: each running VM's files of the dead
        daemon (ENOTCONN) are replaced by the new one's."""
        for vm_id, init in list(self._live.items()):
            if not init.alive():
                continue
            argv = [str(self._helper), "lxcfs-attach", str(init.pid), str(mount), *BOUND]
            done = subprocess.run(argv, capture_output=True, timeout=30, check=False, env={})
            if done.returncode != 0:
                log.warning(
                    "vm %s keeps the dead lxcfs's files: %s",
                    vm_id, done.stderr.decode(errors="replace").strip(),
                )  # fmt: skip

    def _id_base(self, vm_id: str, state: dict[str, Any]) -> int:
        """The VM's host id range, claimed again (after a reboot emptied /run,
        or for a VM forked without one); recorded in `state` if it changed."""
        had = state.get("id_base")
        base = self._ids.claim(self._state_path(vm_id), want=None if had is None else int(had))
        if base != had:
            state["id_base"] = base
            self._save(vm_id, state)
        return base

    def id_base(self, vm_id: str) -> int | None:
        """The first host uid/gid of the VM's user namespace, or None."""
        self._require(vm_id)
        base = self._load(vm_id).get("id_base")
        return int(base) if base is not None and self.userns else None

    def _attach(self, vm_id: str, init: jail.InitProcess, policy: NetworkPolicy) -> None:
        if not policy.egress:
            return
        if self.net is None:
            raise ArkerError(
                ErrorCode.UNSUPPORTED_OPERATION,
                "this host cannot give vms a network (see the server log); fork with "
                "network egress off",
            )
        link = self.net.attach(vm_id, init.pid, _cidrs(policy))
        self._policies[vm_id] = policy
        self._by_address[link.address] = _egress_policy(policy)
        resolver = f"nameserver {link.gateway}\n".encode()
        root = self.pool.vm_path(vm_id)
        try:
            current = files.read_file(root, "/etc/resolv.conf", len(resolver) + 1, anywhere=True)
        except ArkerError:
            current = b""
        if current != resolver:  # a fork of a VM that ran on this link has it already
            files.write_file(root, "/etc/resolv.conf", resolver, uid=0, gid=0, anywhere=True)

    def _detach(self, vm_id: str, *, delete_link: bool) -> None:
        if self._policies.pop(vm_id, None) is not None and self.net is not None:
            link = self.net.link(vm_id)
            if link is not None:
                self._by_address.pop(link.address, None)
            self.net.detach(vm_id, delete_link=delete_link)

    def _init(self, vm_id: str) -> jail.InitProcess | None:
        live = self._live.get(vm_id)
        if live is not None and live.alive():
            return live  # started by this engine: no state file to read on a run's path
        saved = self._load(vm_id).get("init")
        if not saved:
            return None
        init = jail.InitProcess(int(saved[0]), int(saved[1]))
        return init if init.alive() else None

    # -- runs
    def start_run(self, vm_id: str, run_id: str, spec: RunSpec) -> None:
        check_name(run_id, "run id")
        with self._lock(vm_id):
            self._require(vm_id)  # under the lock: a delete may have just won
            init = self._start(vm_id)
            self.runner.start(vm_id, run_id, spec, init)

    def wait_run(self, vm_id: str, run_id: str, timeout_s: float | None = None) -> RunInfo:
        return self.runner.wait(vm_id, check_name(run_id, "run id"), timeout_s)

    def run_info(self, vm_id: str, run_id: str) -> RunInfo:
        return self.runner.info(vm_id, check_name(run_id, "run id"))

    def cancel_run(self, vm_id: str, run_id: str) -> RunInfo:
        return self.runner.cancel(vm_id, check_name(run_id, "run id"))

    def read_output(
        self, vm_id: str, run_id: str, stream: str, offset: int, limit: int
    ) -> OutputChunk:
        return self.runner.read_output(vm_id, run_id, stream, offset, limit)

    def output_wakers(self, vm_id: str, run_id: str) -> tuple[int, ...]:
        return self.runner.output_wakers(vm_id, run_id)

    def write_stdin(self, vm_id: str, run_id: str, data: bytes, timeout_s: float) -> int:
        return self.runner.write_stdin(vm_id, check_name(run_id, "run id"), data, timeout_s)

    def close_stdin(self, vm_id: str, run_id: str) -> None:
        self.runner.close_stdin(vm_id, check_name(run_id, "run id"))

    def signal_run(self, vm_id: str, run_id: str, signum: int) -> None:
        self.runner.signal(vm_id, check_name(run_id, "run id"), signum)

    def forget_run(self, vm_id: str, run_id: str) -> None:
        self.runner.forget(vm_id, check_name(run_id, "run id"))
        # Off the run's path (the server forgets a run after answering it);
        # under the VM's lock, so no leaf is swept between its mkdir and its
        # run's fork.
        with self._lock(vm_id):
            self.cgroups.sweep_runs(vm_id, self.runner.in_flight(vm_id))

    # -- ports
    def connect_port(self, vm_id: str, port: int) -> socket.socket:
        with self._lock(vm_id):
            self._require(vm_id)  # under the lock: a delete may have just won
            init = self._start(vm_id)
        try:
            sock = _netns.socket_in(f"/proc/{init.pid}/ns/net")
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise ArkerError(
                ErrorCode.UNAVAILABLE, f"vm {vm_id} stopped as it was reached"
            ) from exc
        if not init.alive():  # the pid was reused between the start and the open
            sock.close()
            raise ArkerError(ErrorCode.UNAVAILABLE, f"vm {vm_id} stopped as it was reached")
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError as exc:
            sock.close()
            raise port_closed(vm_id, port) from exc
        except OSError as exc:
            sock.close()
            raise ArkerError(
                ErrorCode.UNAVAILABLE,
                f"port {port} in vm {vm_id} did not accept: {exc.strerror or exc}",
                status=502,
            ) from exc
        sock.settimeout(None)
        return sock

    # -- terminals
    def open_pty(
        self,
        vm_id: str,
        *,
        user: Literal["user", "root"] = "user",
        cols: int = 80,
        rows: int = 24,
        command: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Pty:
        pty.check_size(cols, rows)
        self._require(vm_id)
        shell = "/bin/sh"
        if command is None:
            try:
                passwd = files.read_file(
                    self.pool.vm_path(vm_id), "/etc/passwd", 1 << 20, anywhere=True
                )
            except ArkerError:
                passwd = b""  # none, or not a file: the VM's root may have made it anything
            shell = pty.login_shell(passwd, 0 if user == "root" else 1000)
        pty_id = secrets.token_hex(8)
        with self._lock(vm_id):
            self._require(vm_id)  # under the lock: a delete may have just won
            init = self._start(vm_id)
            assert init.agent is not None
            cg = self.cgroups.create_pty(vm_id, pty_id)

            def end() -> None:
                self.cgroups.remove_pty(vm_id, pty_id)

            try:
                return pty.start(
                    init.agent,
                    cg,
                    end,
                    user=user,
                    cols=cols,
                    rows=rows,
                    command=command,
                    shell=shell,
                    env=env,
                )
            except BaseException:
                end()
                raise

    # -- files
    def read_file(self, vm_id: str, path: str, max_bytes: int) -> bytes:
        self._require(vm_id)
        return files.read_file(self.pool.vm_path(vm_id), path, max_bytes)

    def write_file(self, vm_id: str, path: str, data: bytes) -> FileInfo:
        self._require(vm_id)
        # The bytes are already in memory, bounded by the caller (the server's
        # --max-file-bytes); a second, different cap here would only disagree with it.
        return files.write_file(self.pool.vm_path(vm_id), path, data, max_bytes=len(data))

    def open_file_writer(self, vm_id: str, path: str, max_bytes: int) -> FileWriter:
        self._require(vm_id)
        return files.FileWriter(self.pool.vm_path(vm_id), path, max_bytes=max_bytes)

    # -- directories
    def list_dir(
        self, vm_id: str, path: str, *, depth: int = 1, limit: int = 200, offset: int = 0
    ) -> DirListing:
        self._require(vm_id)
        root = self.pool.vm_path(vm_id)
        return fs.list_dir(root, path, depth=depth, limit=limit, offset=offset)

    def stat_path(self, vm_id: str, path: str) -> FsEntry:
        self._require(vm_id)
        return fs.stat_path(self.pool.vm_path(vm_id), path)

    def make_dir(self, vm_id: str, path: str, *, parents: bool = False) -> FsEntry:
        self._require(vm_id)
        return fs.make_dir(self.pool.vm_path(vm_id), path, parents=parents)

    def move_path(
        self, vm_id: str, source: str, destination: str, *, overwrite: bool = False
    ) -> FsEntry:
        self._require(vm_id)
        root = self.pool.vm_path(vm_id)
        return fs.move_path(root, source, destination, overwrite=overwrite)

    def remove_path(self, vm_id: str, path: str, *, recursive: bool = False) -> None:
        self._require(vm_id)
        fs.remove_path(self.pool.vm_path(vm_id), path, recursive=recursive)

    def open_archive(self, vm_id: str, path: str) -> ArchiveReader:
        self._require(vm_id)
        return archive.DirPacker(self.pool.vm_path(vm_id), path)

    def unpack_archive(self, vm_id: str, path: str, tarball: str, max_bytes: int) -> Unpacked:
        self._require(vm_id)
        return archive.unpack(self.pool.vm_path(vm_id), path, Path(tarball), max_bytes)

    # -- checkpoints
    def checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        self._require(vm_id)
        self.pool.checkpoint(vm_id, checkpoint_id)

    def restore(self, vm_id: str, checkpoint_id: str) -> None:
        self._require(vm_id)
        if checkpoint_id not in self.pool.checkpoints(vm_id):  # before stopping anything
            raise ArkerError(ErrorCode.NOT_FOUND, f"no checkpoint {checkpoint_id!r} of {vm_id!r}")
        with self._lock(vm_id):
            self._kill(vm_id, "the vm was restored to a checkpoint")
            self._save(vm_id, {**self._load(vm_id), "init": None})
            self.pool.restore(vm_id, checkpoint_id)

    def delete_checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        self.pool.delete_checkpoint(vm_id, checkpoint_id)

    def checkpoints(self, vm_id: str) -> list[str]:
        self._require(vm_id)
        return self.pool.checkpoints(vm_id)

    # -- shipping (the cluster's Shipper moves these streams through S3)
    def send_checkpoint(
        self, vm_id: str, checkpoint_id: str, parent_id: str | None, out: BinaryIO
    ) -> None:
        path = self.pool.checkpoint_path(vm_id, checkpoint_id)
        if not path.is_dir():
            self._require(vm_id)
        parent = None if parent_id is None else self.pool.checkpoint_path(vm_id, parent_id)
        self.pool.send(path, parent, out, f"checkpoint {checkpoint_id!r} of {vm_id!r}")

    def receive_checkpoint(
        self, vm_id: str, checkpoint_id: str, parent_id: str | None, src: BinaryIO
    ) -> None:
        if parent_id is not None and not self.pool.checkpoint_path(vm_id, parent_id).is_dir():
            raise ArkerError(
                ErrorCode.NOT_FOUND,
                f"no checkpoint {parent_id!r} of {vm_id!r} here to receive an increment onto",
            )
        with self._lock(vm_id):
            self.pool.receive_checkpoint(vm_id, checkpoint_id, src)

    def restore_received(
        self,
        vm_id: str,
        checkpoint_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> None:
        with self._lock(vm_id):
            if self.pool.vm_path(vm_id).is_dir():
                raise ArkerError(ErrorCode.CONFLICT, f"vm {vm_id!r} already exists here")
            limits = limits or self.default_limits
            self.pool.fork_checkpoint(vm_id, checkpoint_id, disk_bytes=limits.disk_bytes)
            self._adopt(vm_id, hostname, limits, network)

    def send_golden(self, name: str, out: BinaryIO) -> None:
        self.pool.send(self.pool.golden_path(name), None, out, f"golden {name!r}")

    def receive_golden(self, name: str, src: BinaryIO) -> None:
        self.pool.receive_golden(name, src)

    # -- state
    def memory_bytes(self, vm_id: str) -> int:
        """Memory the VM's cgroup holds now (0 when stopped)."""
        try:
            return self.cgroups.memory_bytes(vm_id)
        except FileNotFoundError:
            return 0

    def _require(self, vm_id: str) -> None:
        if not self.pool.vm_path(vm_id).is_dir():
            raise ArkerError(ErrorCode.NOT_FOUND, f"no vm {vm_id!r}")

    def _lock(self, vm_id: str) -> threading.RLock:
        with self._locks_lock:
            return self._locks.setdefault(vm_id, threading.RLock())

    def _state_path(self, vm_id: str) -> Path:
        return self.state_dir.absolute() / f"{vm_id}.json"

    def _load(self, vm_id: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state_dir / f"{vm_id}.json").read_text())
        except FileNotFoundError:
            # A VM whose state was lost (or made by a bare pool): defaults.
            data = {"hostname": "vm", "limits": asdict(self.default_limits), "init": None}
        return data

    def _save(self, vm_id: str, state: dict[str, Any]) -> None:
        path = self.state_dir / f"{vm_id}.json"
        tmp = path.with_name(f".{vm_id}.json.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)


def _egress_policy(policy: NetworkPolicy) -> Policy:
    """The forwarder's and proxy's view: their empty allow-list is the internet."""
    return Policy(policy.egress, policy.allow or ())


def _cidrs(policy: NetworkPolicy) -> list[str] | None:
    """What nftables enforces of an allow-list: its CIDRs (None: the internet).
    Its names are the proxy's and the DNS forwarder's."""
    if policy.allow is None:
        return None
    return [str(cidr) for cidr in parse_allow(policy.allow)[1]]


def _detach_mounts_under(prefix: Path) -> None:
    """VM mounts live in the VMs' own mount namespaces and die with them; a
    mount under the VM tree in the host's namespace is a leak: detach it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    want = str(prefix) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted(points, key=len, reverse=True):
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
        if point.startswith(want):
            log.warning("detaching leftover mount %s", point)
            libc.umount2(point.encode(), 2)  # MNT_DETACH
