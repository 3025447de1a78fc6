"""An in-memory Engine for route and service tests (never shipped).

Commands are a tiny script language, steps separated by "; ":
  echo TEXT          TEXT and a newline on stdout
  err TEXT           TEXT and a newline on stderr
  big N              N bytes of "x" on stdout (to hit the output cap)
  exit N             end with status N
  sleep S            wait S seconds (cancel and timeout cut it short)
  append PATH TEXT   append TEXT and a newline to a file of the VM
  cat PATH           the file's bytes on stdout
  stdin              the run's stdin on stdout
  refuse             (alone) start_run raises invalid_request
Anything else prints the command back. The "disk" (goldens, VMs, files,
checkpoints) lives in a FakeDisk that a second engine may share, to play a
server restart; opening an engine kills every run left on it, as a real
restart does."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field

from arker.engine.base import (
    Engine,
    FileInfo,
    GoldenInfo,
    Limits,
    NetworkPolicy,
    Progress,
    RunInfo,
    RunPhase,
    RunSpec,
    VmPower,
    port_closed,
)
from arker.errors import ArkerError, ErrorCode


@dataclass
class FakeRun:
    spec: RunSpec
    started_at: float
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    out_trunc: bool = False
    err_trunc: bool = False
    phase: RunPhase = RunPhase.RUNNING
    exit_code: int | None = None
    finished_at: float | None = None
    failure: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    stop_as: RunPhase = RunPhase.CANCELLED
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class FakeVm:
    files: dict[str, bytes]
    power: VmPower = VmPower.STOPPED
    checkpoints: dict[str, dict[str, bytes]] = field(default_factory=dict)
    runs: dict[str, FakeRun] = field(default_factory=dict)


@dataclass
class FakeDisk:
    goldens: dict[str, GoldenInfo] = field(
        default_factory=lambda: {"busybox": GoldenInfo("busybox", "tiny", 1_700_000_000.0)}
    )
    vms: dict[str, FakeVm] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


class FakeEngine(Engine):
    kind = "fake"

    def __init__(
        self,
        data_dir: str | None = None,
        disk: FakeDisk | None = None,
        supports_checkpoints: bool = True,
    ) -> None:
        self.disk = disk or FakeDisk()
        self.supports_checkpoints = supports_checkpoints
        self.opened = self.closed = False
        self.calls: list[str] = []
        self.storage_full = False  # check_storage raises insufficient_storage
        self.limits: dict[str, Limits | None] = {}
        self.networks: dict[str, NetworkPolicy | None] = {}
        # (vm_id, port) -> a local listener's address that stands for the
        # VM's port; and every connection handed out, to prove none leaks.
        self.ports: dict[tuple[str, int], tuple[str, int]] = {}
        self.port_sockets: list[socket.socket] = []

    # -- lifecycle
    def open(self) -> None:
        self.opened = True
        self.kill_all("the engine restarted")

    def close(self) -> None:
        self.closed = True
        self.kill_all("the engine closed")

    def kill_all(self, why: str) -> None:
        with self.disk.lock:
            for vm in self.disk.vms.values():
                for run in vm.runs.values():
                    if run.phase is RunPhase.RUNNING:
                        self._end(run, RunPhase.FAILED, None, why)
                vm.runs.clear()
                vm.power = VmPower.STOPPED

    # -- goldens
    def goldens(self) -> list[GoldenInfo]:
        return list(self.disk.goldens.values())

    def build_golden(self, name: str, progress: Progress | None = None) -> GoldenInfo:
        info = GoldenInfo(name, None, time.time())
        self.disk.goldens[name] = info
        return info

    def import_golden(
        self,
        name: str,
        tarball: str,
        progress: Progress | None = None,
        *,
        description: str | None = None,
        require_shell: bool = False,
    ) -> GoldenInfo:
        return self.build_golden(name)

    # -- VMs
    def _vm(self, vm_id: str) -> FakeVm:
        vm = self.disk.vms.get(vm_id)
        if vm is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"vm {vm_id!r} not found")
        return vm

    def fork(
        self,
        source: str,
        vm_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> None:
        self.calls.append(f"fork {source} {vm_id}")
        self.limits[vm_id] = limits
        self.networks[vm_id] = network
        with self.disk.lock:
            if source in self.disk.goldens:
                files: dict[str, bytes] = {}
            else:
                files = dict(self._vm(source).files)
            self.disk.vms[vm_id] = FakeVm(files=files)

    def set_network(self, vm_id: str, network: NetworkPolicy) -> None:
        self._vm(vm_id)
        self.calls.append(f"set_network {vm_id}")
        self.networks[vm_id] = network

    def check_storage(self) -> None:
        if self.storage_full:
            raise ArkerError(ErrorCode.INSUFFICIENT_STORAGE, "the fake pool is below its reserve")

    def delete(self, vm_id: str) -> None:
        with self.disk.lock:
            vm = self.disk.vms.pop(vm_id, None)
        if vm is not None:
            for run in vm.runs.values():
                run.stop_as = RunPhase.CANCELLED
                run.stop.set()

    def vm_ids(self) -> list[str]:
        return list(self.disk.vms)

    def power(self, vm_id: str) -> VmPower:
        return self._vm(vm_id).power

    def stop(self, vm_id: str) -> None:
        vm = self._vm(vm_id)
        for run in vm.runs.values():
            run.stop.set()
        vm.power = VmPower.STOPPED

    def restart(self, vm_id: str) -> None:
        self.calls.append(f"restart {vm_id}")
        vm = self._vm(vm_id)
        for run in vm.runs.values():
            self._end(run, RunPhase.FAILED, None, "the vm was restarted")
        vm.power = VmPower.RUNNING

    # -- runs
    def start_run(self, vm_id: str, run_id: str, spec: RunSpec) -> None:
        self.calls.append(f"start {vm_id} {run_id}")
        vm = self._vm(vm_id)
        if spec.command == "refuse":
            raise ArkerError(ErrorCode.INVALID_REQUEST, "the engine refused to start it")
        run = FakeRun(spec=spec, started_at=time.time())
        vm.runs[run_id] = run
        vm.power = VmPower.RUNNING
        threading.Thread(target=self._execute, args=(vm, run), daemon=True).start()

    def _execute(self, vm: FakeVm, run: FakeRun) -> None:
        deadline = None if run.spec.timeout_s is None else time.monotonic() + run.spec.timeout_s
        exit_code = 0
        for step in run.spec.command.split("; "):
            word, _, rest = step.partition(" ")
            if run.stop.is_set():
                break
            if word == "echo":
                self._emit(run, "out", (rest + "\n").encode())
            elif word == "err":
                self._emit(run, "err", (rest + "\n").encode())
            elif word == "big":
                self._emit(run, "out", b"x" * int(rest))
            elif word == "exit":
                exit_code = int(rest)
                break
            elif word == "sleep":
                wait = float(rest)
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                if run.stop.wait(wait):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    run.stop_as = RunPhase.TIMED_OUT
                    run.stop.set()
                    break
            elif word == "append":
                path, _, text = rest.partition(" ")
                with self.disk.lock:
                    vm.files[path] = vm.files.get(path, b"") + (text + "\n").encode()
            elif word == "cat":
                self._emit(run, "out", vm.files.get(rest, b""))
            elif word == "stdin":
                self._emit(run, "out", run.spec.stdin)
            else:
                self._emit(run, "out", step.encode())
        if run.stop.is_set():
            self._end(run, run.stop_as, None if run.stop_as is not RunPhase.COMPLETED else 137)
        else:
            self._end(run, RunPhase.COMPLETED, exit_code)

    def _emit(self, run: FakeRun, stream: str, data: bytes) -> None:
        cap = run.spec.output_cap_bytes
        buf = run.stdout if stream == "out" else run.stderr
        room = max(0, cap - len(buf))
        buf += data[:room]
        if len(data) > room:
            if stream == "out":
                run.out_trunc = True
            else:
                run.err_trunc = True

    def _end(
        self, run: FakeRun, phase: RunPhase, exit_code: int | None, why: str | None = None
    ) -> None:
        with self.disk.lock:
            if run.phase is not RunPhase.RUNNING:
                return
            run.phase, run.exit_code, run.finished_at, run.failure = (
                phase,
                exit_code,
                time.time(),
                why,
            )
        run.done.set()

    def _run(self, vm_id: str, run_id: str) -> FakeRun:
        run = self._vm(vm_id).runs.get(run_id)
        if run is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"run {run_id!r} not found")
        return run

    @staticmethod
    def _info(run: FakeRun) -> RunInfo:
        return RunInfo(
            phase=run.phase,
            exit_code=run.exit_code,
            stdout=bytes(run.stdout),
            stderr=bytes(run.stderr),
            stdout_truncated=run.out_trunc,
            stderr_truncated=run.err_trunc,
            oom_killed=False,
            started_at=run.started_at,
            finished_at=run.finished_at,
            failure_reason=run.failure,
        )

    def wait_run(self, vm_id: str, run_id: str, timeout_s: float | None = None) -> RunInfo:
        run = self._run(vm_id, run_id)
        run.done.wait(timeout_s)
        return self._info(run)

    def run_info(self, vm_id: str, run_id: str) -> RunInfo:
        return self._info(self._run(vm_id, run_id))

    def cancel_run(self, vm_id: str, run_id: str) -> RunInfo:
        run = self._run(vm_id, run_id)
        run.stop_as = RunPhase.CANCELLED
        run.stop.set()
        run.done.wait(5)
        return self._info(run)

    def forget_run(self, vm_id: str, run_id: str) -> None:
        vm = self.disk.vms.get(vm_id)
        if vm is not None:
            vm.runs.pop(run_id, None)

    # -- ports
    def connect_port(self, vm_id: str, port: int) -> socket.socket:
        self.calls.append(f"connect {vm_id} {port}")
        vm = self._vm(vm_id)
        vm.power = VmPower.RUNNING  # started, as a run starts it
        address = self.ports.get((vm_id, port))
        if address is None:
            raise port_closed(vm_id, port)
        sock = socket.create_connection(address, timeout=5)
        sock.settimeout(None)
        self.port_sockets.append(sock)
        return sock

    # -- files
    def read_file(self, vm_id: str, path: str, max_bytes: int) -> bytes:
        data = self._vm(vm_id).files.get(path)
        if data is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"no such file: {path}")
        if len(data) > max_bytes:
            raise ArkerError(ErrorCode.PAYLOAD_TOO_LARGE, "file too large")
        return data

    def write_file(self, vm_id: str, path: str, data: bytes) -> FileInfo:
        self.calls.append(f"write {vm_id} {path}")
        self._vm(vm_id).files[path] = data
        return FileInfo(path, len(data), hashlib.sha256(data).hexdigest())

    # -- checkpoints
    def _need_checkpoints(self) -> None:
        if not self.supports_checkpoints:
            raise ArkerError(ErrorCode.UNSUPPORTED_OPERATION, "no checkpoints")

    def checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        self._need_checkpoints()
        vm = self._vm(vm_id)
        vm.checkpoints[checkpoint_id] = dict(vm.files)

    def restore(self, vm_id: str, checkpoint_id: str) -> None:
        self._need_checkpoints()
        vm = self._vm(vm_id)
        self.stop(vm_id)
        vm.files = dict(vm.checkpoints[checkpoint_id])

    def delete_checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        self._need_checkpoints()
        self._vm(vm_id).checkpoints.pop(checkpoint_id, None)

    def checkpoints(self, vm_id: str) -> list[str]:
        self._need_checkpoints()
        return list(self._vm(vm_id).checkpoints)
