"""Runs: hand a command to the VM's PID 1, follow it, cancel it.

A run is one message to the VM's PID 1 (native/agent.c) carrying the
command and open files: two memfds for its output, the run's leaf cgroup and
its cgroup.kill. PID 1 forks the command straight into that cgroup, copies
its output into the memfds (capped) and enforces its timeout, so a run keeps
going while the server is busy. The engine keeps the run's own socket to
PID 1: readable once the run has ended (PID 1's last word is the result, as
JSON), the way to cancel it, and at EOF if the VM died under it.

Nothing of a run is on disk. The server records every run in its database
and, after a restart, recovers runs from there (a restart kills every VM);
output kept in memory until the server has stored it spares each run four
file creations, which were seen to wait ~0.3 ms each on the journal of the
disk the database fsyncs to.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import socket
import threading
import time
from typing import Any

from arker.engine._cgroups import Cgroups, RunCgroup
from arker.engine.base import RunInfo, RunPhase, RunSpec
from arker.engine.jail import InitProcess
from arker.errors import ArkerError, ErrorCode

__all__ = ["Runner"]

_START_TIMEOUT_S = 30.0
_CANCEL_TIMEOUT_S = 10.0
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A VM this close to its pids.max as a run ends is full: its next fork fails.
PIDS_NEAR_MAX = 8
_USERS = {"user": (1000, 1000, "/home/user"), "root": (0, 0, "/root")}


class _Run:
    """One run as the engine follows it: its socket to PID 1, its output."""

    def __init__(self, sock: socket.socket, stdout: int, stderr: int, started_at: float) -> None:
        self.sock = sock
        self.stdout = stdout  # memfds PID 1 writes into; read with pread
        self.stderr = stderr
        self.started_at = started_at
        self.result: dict[str, Any] | None = None  # PID 1's "d" message, once read
        self.lost: str | None = None  # why the run ended with its VM
        self.pids_hits = 0  # the VM's count of forks refused at pids.max, at the start
        self.warnings: tuple[tuple[str, str], ...] | None = None  # decided once, at the end
        self._lock = threading.Lock()

    def ended(self, timeout_s: float | None = 0.0) -> bool:
        """Whether PID 1 has answered or gone away, waiting up to `timeout_s`
        (None: for as long as it takes). Any number of threads may ask."""
        if self.result is not None:
            return True
        poller = select.poll()  # not select(): fds past 1024 are common in a server
        poller.register(self.sock, select.POLLIN)
        ms = None if timeout_s is None else max(0, math.ceil(timeout_s * 1000))
        return bool(poller.poll(ms))

    def take_result(self) -> dict[str, Any] | None:
        """The result, reading PID 1's last message once it is there; None
        while the run goes on, or when PID 1 died without a word."""
        with self._lock:
            if self.result is None and self.sock.fileno() >= 0:
                try:
                    msg = self.sock.recv(4096, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError:
                    msg = b""
                if msg.startswith(b"d"):
                    self.result = json.loads(msg[1:])
            return self.result

    def record(self, result: dict[str, Any]) -> None:
        """Set the result where PID 1 could not give one."""
        with self._lock:
            self.result = result

    def output(self) -> tuple[bytes, bytes]:
        return _read_all(self.stdout), _read_all(self.stderr)

    def close(self) -> None:
        self.sock.close()
        for fd in (self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stdout = self.stderr = -1


class Runner:
    """Start and follow runs; thread-safe."""

    def __init__(self, cgroups: Cgroups) -> None:
        self.cgroups = cgroups
        self._runs: dict[tuple[str, str], _Run] = {}
        self._lock = threading.Lock()

    def in_flight(self, vm_id: str) -> set[str]:
        with self._lock:
            mine = [(r, h) for (v, r), h in self._runs.items() if v == vm_id]
        return {r for r, h in mine if not h.ended()}

    def start(self, vm_id: str, run_id: str, spec: RunSpec, init: InitProcess) -> None:
        """Have the VM's PID 1 (`init`) start `spec`; return once it has forked
        the command, raising if it could not."""
        if init.agent is None:
            raise ArkerError(
                ErrorCode.UNAVAILABLE, f"vm {vm_id!r} was not started by this engine: restart it"
            )
        argv, env = _command(spec)
        with self._lock:
            if (vm_id, run_id) in self._runs:
                raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} already exists")
        started_at = time.time()
        pids_hits = self.cgroups.pids_hits(vm_id)
        cg = self.cgroups.create_run(vm_id, run_id)
        out = err = -1
        try:
            out = os.memfd_create("arker-stdout", os.MFD_CLOEXEC)
            err = os.memfd_create("arker-stderr", os.MFD_CLOEXEC)
            sock = self._send(init.agent, cg, spec, argv, env, out, err)
        except BaseException:
            for fd in (out, err):
                if fd >= 0:
                    os.close(fd)
            self.cgroups.sweep_runs(vm_id, self.in_flight(vm_id))
            raise
        run = _Run(sock, out, err, started_at)
        run.pids_hits = pids_hits
        with self._lock:
            self._runs[(vm_id, run_id)] = run

    def _send(
        self,
        agent: socket.socket,
        cg: RunCgroup,
        spec: RunSpec,
        argv: list[str],
        env: dict[str, str],
        out: int,
        err: int,
    ) -> socket.socket:
        """Send the run to PID 1 and wait for its "started"; return the run's socket."""
        uid, gid, _ = _USERS[spec.user]
        timeout_ms = 0 if spec.timeout_s is None else max(1, math.ceil(spec.timeout_s * 1000))
        fields = [str(uid), str(gid), str(max(0, spec.output_cap_bytes)), str(timeout_ms)]
        fields += [spec.cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())]
        request = b"".join(f.encode() + b"\0" for f in fields)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds: list[int] = []
        try:
            fds.append(_memfd("arker-run", request))
            stdin = spec.stdin
            fds.append(_memfd("arker-stdin", stdin) if stdin else _open("/dev/null", os.O_RDONLY))
            fds.append(_open(cg.leaf, os.O_RDONLY | os.O_DIRECTORY))
            fds.append(_open(f"{cg.leaf}/cgroup.kill", os.O_WRONLY, missing_ok=True))
            fds.append(_open(cg.oom_file, os.O_RDONLY, missing_ok=True))
            request_fd, stdin_fd, leaf_fd, kill_fd, oom_fd = fds
            order = [theirs.fileno(), request_fd, stdin_fd, out, err, leaf_fd, kill_fd, oom_fd]
            try:
                socket.send_fds(agent, [b"r"], order)
            except OSError as exc:  # EPIPE: PID 1 is gone; timeout: it is stuck
                raise ArkerError(
                    ErrorCode.UNAVAILABLE, f"the vm's init did not take the run: {exc}"
                ) from exc
            theirs.close()
            ours.settimeout(_START_TIMEOUT_S)
            try:
                answer = ours.recv(4096)
            except OSError as exc:
                raise ArkerError(
                    ErrorCode.UNAVAILABLE, f"the vm's init did not start the run: {exc}"
                ) from exc
            ours.settimeout(None)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            for fd in fds:
                os.close(fd)
        if answer == b"s":
            return ours
        ours.close()
        reason = answer[1:].decode(errors="replace")
        if answer.startswith(b"P"):
            raise ArkerError(ErrorCode.CONFLICT, f"cannot start the command: {reason}")
        if answer.startswith(b"E"):
            raise ArkerError(ErrorCode.INTERNAL, f"cannot start the command: {reason}")
        raise ArkerError(ErrorCode.UNAVAILABLE, "the vm stopped as the run was starting")

    def wait(self, vm_id: str, run_id: str, timeout_s: float | None = None) -> RunInfo:
        self._run(vm_id, run_id).ended(timeout_s)
        return self.info(vm_id, run_id)

    def info(self, vm_id: str, run_id: str) -> RunInfo:
        """The run as it stands now."""
        run = self._run(vm_id, run_id)
        if run.lost is not None:
            # The VM was stopped under it: whatever PID 1 said after that
            # describes a run we killed.
            return _info(run, RunPhase.FAILED, time.time(), {}, run.lost)
        ended = run.ended()
        result = run.take_result() if ended else None
        if result is None and ended:
            reason = "the vm's init ended before the run did"
            return _info(run, RunPhase.FAILED, time.time(), {}, reason)
        if result is None:
            return _info(run, RunPhase.RUNNING, None, {})
        if result.get("timed_out"):
            phase = RunPhase.TIMED_OUT
        elif result.get("cancelled"):
            phase = RunPhase.CANCELLED
        else:
            phase = RunPhase.COMPLETED
        if run.warnings is None:
            run.warnings = self._pids_warnings(vm_id, run)
        return _info(run, phase, result["finished_at"], result)

    def _pids_warnings(self, vm_id: str, run: _Run) -> tuple[tuple[str, str], ...]:
        """`pids_exhausted` when the run ends with the VM's process table
        (nearly) full, or when a fork in the VM was refused at the limit while
        the run went on (pids.events counts the whole VM, so a run alongside a
        fork bomb is warned too: it may have been the one refused)."""
        pids = self.cgroups.pids(vm_id)
        if pids is None:
            return ()
        current, limit, hits = pids
        if current >= limit - PIDS_NEAR_MAX:
            msg = (
                f"the vm holds {current} of its {limit} processes after this run: "
                "processes left behind keep the limit (nearly) full, so new runs and "
                "forks may fail; kill them or restart the vm"
            )
            return (("pids_exhausted", msg),)
        if hits > run.pids_hits:
            msg = (
                f"{hits - run.pids_hits} fork(s) in the vm failed during this run: "
                f"it reached its limit of {limit} processes"
            )
            return (("pids_exhausted", msg),)
        return ()

    def cancel(self, vm_id: str, run_id: str) -> RunInfo:
        """Kill the run's tree (through PID 1, which records it)."""
        info = self.info(vm_id, run_id)
        if info.done:
            return info
        run = self._run(vm_id, run_id)
        with contextlib.suppress(OSError):  # PID 1 let go: the run ended or the VM died
            run.sock.send(b"c")
        run.ended(_CANCEL_TIMEOUT_S)
        if run.take_result() is None:
            # PID 1 could not record the cancel (the VM died, or it is stuck):
            # kill what is left and record it here.
            self.cgroups.kill_run(vm_id, run_id)
            run.record({"exit_code": None, "cancelled": True, "finished_at": time.time()})
        return self.info(vm_id, run_id)

    def forget(self, vm_id: str, run_id: str) -> None:
        with self._lock:
            run = self._runs.get((vm_id, run_id))
            if run is None:
                return
            if not run.ended():
                raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} is still running")
            del self._runs[(vm_id, run_id)]
        run.close()

    def end_vm(self, vm_id: str, reason: str) -> None:
        """Mark the VM's runs in flight as failed for `reason`: its processes
        are about to be killed, and a run killed so is no command's doing."""
        with self._lock:
            mine = [h for (v, _), h in self._runs.items() if v == vm_id]
        for run in mine:
            if run.take_result() is None:
                run.lost = reason

    def forget_vm(self, vm_id: str) -> None:
        """Drop every run of a deleted VM (its processes are already dead)."""
        with self._lock:
            runs = [h for (v, _), h in self._runs.items() if v == vm_id]
            self._runs = {k: h for k, h in self._runs.items() if k[0] != vm_id}
        for run in runs:
            run.close()

    def _run(self, vm_id: str, run_id: str) -> _Run:
        with self._lock:
            run = self._runs.get((vm_id, run_id))
        if run is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"no run {run_id!r} in vm {vm_id!r}")
        return run


def _open(path: str, flags: int, missing_ok: bool = False) -> int:
    """An fd for PID 1; with `missing_ok`, /dev/null stands in for a file this
    kernel lacks (cgroup.kill before 5.14, an oom counter)."""
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)  # the command reads its stdin from the start
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_all(fd: int) -> bytes:
    """What PID 1 has written so far (it is capped, so it fits in memory)."""
    if fd < 0:
        return b""
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _command(spec: RunSpec) -> tuple[list[str], dict[str, str]]:
    if "\0" in spec.command or "\0" in spec.cwd:
        raise ArkerError(ErrorCode.INVALID_REQUEST, "command and cwd must not contain NUL")
    if not spec.cwd.startswith("/"):
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"cwd must be absolute: {spec.cwd!r}")
    if spec.user not in _USERS:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"unknown user {spec.user!r}")
    uid, _, home = _USERS[spec.user]
    name = "root" if uid == 0 else "user"
    env = {"PATH": _PATH, "HOME": home, "USER": name, "LOGNAME": name, "SHELL": "/bin/sh"}
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"invalid environment variable {key!r}")
        env[key] = value
    return ["/bin/sh", "-c", spec.command], env


def _info(
    run: _Run,
    phase: RunPhase,
    finished: float | None,
    result: dict[str, Any],
    failure: str | None = None,
) -> RunInfo:
    stdout, stderr = run.output()
    return RunInfo(
        phase=phase,
        exit_code=result.get("exit_code"),
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=bool(result.get("stdout_truncated")),
        stderr_truncated=bool(result.get("stderr_truncated")),
        oom_killed=bool(result.get("oom_killed")),
        started_at=run.started_at,
        finished_at=finished,
        failure_reason=failure,
        warnings=run.warnings or (),
    )
