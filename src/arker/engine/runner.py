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
import fcntl
import json
import math
import os
import select
import socket
import threading
import time
from typing import Any

from arker.engine._cgroups import Cgroups, RunCgroup
from arker.engine._pid1 import PATH, USERS, ask, fd_for, memfd, request
from arker.engine.base import OutputChunk, RunInfo, RunPhase, RunSpec
from arker.engine.jail import InitProcess
from arker.errors import ArkerError, ErrorCode

__all__ = ["Runner"]

_CANCEL_TIMEOUT_S = 10.0
# A VM this close to its pids.max as a run ends is full: its next fork fails.
PIDS_NEAR_MAX = 8
STDIN_PIPE_BYTES = 1 << 20  # what a run's open stdin holds before it reads


class _Stream:
    """One output stream of a run: the memfd PID 1 keeps it in (its head at
    the start, then a ring of its tail; see agent.c) and the eventfd PID 1
    counts its bytes on, after writing them."""

    def __init__(self, cap: int) -> None:
        self.head = cap // 2
        self.tail = cap - self.head
        self.total = 0
        # Held by every read as well: close() must not free an fd number
        # (for another file to take) between a read's check and its pread.
        self.lock = threading.RLock()
        self.fd = os.memfd_create("arker-output", os.MFD_CLOEXEC)
        try:
            self.count = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            os.close(self.fd)
            raise

    def refresh(self) -> int:
        """The stream's byte count now (the eventfd adds what came since)."""
        with self.lock:  # the loop and worker threads both read it
            if self.count >= 0:
                with contextlib.suppress(BlockingIOError):
                    self.total += os.eventfd_read(self.count)
            return self.total

    def read(self, offset: int, limit: int) -> OutputChunk:
        """Up to `limit` kept bytes from `offset` on, without crossing the
        dropped middle: `start` > `offset` when the bytes there are gone."""
        with self.lock:
            return self._read(offset, limit)

    def _read(self, offset: int, limit: int) -> OutputChunk:
        total = self.refresh()
        kept_head = min(total, self.head)
        if offset < kept_head:
            n = min(limit, kept_head - offset)
            return OutputChunk(offset, _pread(self.fd, n, offset), total)
        start = max(offset, self.head, total - self.tail)
        if start >= total or limit <= 0:
            return OutputChunk(min(max(offset, start), total), b"", total)
        data = self._ring(start, min(limit, total - start))
        # PID 1 may have gone round the ring while we read: what it wrote
        # over is no longer the bytes we were after.
        lost = self.refresh() - self.tail - start
        if lost > 0:
            data, start = data[lost:], start + lost
        return OutputChunk(start, data, total)

    def _ring(self, start: int, n: int) -> bytes:
        at = self.head + (start - self.head) % self.tail
        first = min(n, self.head + self.tail - at)
        data = _pread(self.fd, first, at)
        return data + _pread(self.fd, n - first, self.head) if n > first else data

    def kept(self) -> bytes:
        """Everything kept: the whole stream, or its head and its tail
        (cap/2 bytes each, the head first) when it carried more than the cap."""
        with self.lock:
            return self._kept()

    def _kept(self) -> bytes:
        total = self.refresh()
        if total <= self.head + self.tail:
            return _pread(self.fd, total, 0)
        head = _pread(self.fd, self.head, 0)
        return head + self._ring(total - self.tail, self.tail)

    def close(self) -> None:
        with self.lock:
            fds, self.fd, self.count = (self.fd, self.count), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class _Run:
    """One run as the engine follows it: its socket to PID 1, its output,
    and the write end of its stdin when that is kept open."""

    def __init__(
        self,
        sock: socket.socket,
        out: _Stream,
        err: _Stream,
        started_at: float,
        stdin: int = -1,
    ) -> None:
        self.sock = sock
        self.out = out
        self.err = err
        self.stdin = stdin  # non-blocking; -1 when closed or never open
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
        return self.out.kept(), self.err.kept()

    def stream(self, name: str) -> _Stream:
        if name == "stdout":
            return self.out
        if name == "stderr":
            return self.err
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"no stream {name!r}: stdout or stderr")

    def close_stdin(self) -> None:
        with self._lock:
            fd, self.stdin = self.stdin, -1
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()
        self.close_stdin()
        self.out.close()
        self.err.close()


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
        made: list[_Stream] = []
        stdin_w = -1
        try:
            cap = max(0, spec.output_cap_bytes)
            made.append(_Stream(cap))
            made.append(_Stream(cap))
            out, err = made
            stdin_r, stdin_w = _stdin(spec)
            try:
                sock = self._send(init.agent, cg, spec, argv, env, stdin_r, out, err)
            finally:
                os.close(stdin_r)
        except BaseException:
            for stream in made:
                stream.close()
            if stdin_w >= 0:
                os.close(stdin_w)
            self.cgroups.sweep_runs(vm_id, self.in_flight(vm_id))
            raise
        run = _Run(sock, out, err, started_at, stdin_w)
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
        stdin_fd: int,
        out: _Stream,
        err: _Stream,
    ) -> socket.socket:
        """Send the run to PID 1 and wait for its "started"; return the run's socket."""
        uid, gid, _ = USERS[spec.user]
        timeout_ms = 0 if spec.timeout_s is None else max(1, math.ceil(spec.timeout_s * 1000))
        cap = max(0, spec.output_cap_bytes)
        fds: list[int] = []
        try:
            fds.append(memfd("arker-run", request(uid, gid, cap, timeout_ms, spec.cwd, argv, env)))
            fds.append(fd_for(cg.leaf, os.O_RDONLY | os.O_DIRECTORY))
            fds.append(fd_for(f"{cg.leaf}/cgroup.kill", os.O_WRONLY, missing_ok=True))
            fds.append(fd_for(cg.oom_file, os.O_RDONLY, missing_ok=True))
            request_fd, leaf_fd, kill_fd, oom_fd = fds
            order = [request_fd, stdin_fd, out.fd, err.fd, leaf_fd, kill_fd]
            ours, _ = ask(agent, b"r", [*order, oom_fd, out.count, err.count], "run")
            return ours
        finally:
            for fd in fds:
                os.close(fd)

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
            run.warnings = self._pids_warnings(vm_id, run) + self._oom_warnings(vm_id, result)
        return _info(run, phase, result["finished_at"], result)

    def _oom_warnings(self, vm_id: str, result: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """`oom_killed`, naming the limit: the exit code alone (137) reads as
        any SIGKILL, and a program sized for the host never says why."""
        if not result.get("oom_killed"):
            return ()
        limit = self.cgroups.memory_limit(vm_id)
        size = f" of {limit // 2**20} MiB" if limit is not None else ""
        msg = (
            f"the kernel killed the command: it went past the vm's memory limit{size}; "
            "fork with a larger resources.memory_mib for more"
        )
        return (("oom_killed", msg),)

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

    def read_output(
        self, vm_id: str, run_id: str, stream: str, offset: int, limit: int
    ) -> OutputChunk:
        """Kept bytes of a stream from `offset`; never blocks."""
        return self._run(vm_id, run_id).stream(stream).read(max(0, offset), limit)

    def output_wakers(self, vm_id: str, run_id: str) -> tuple[int, int]:
        """Two fds that turn readable when the run's stdout or stderr has new
        bytes; `read_output` drains them (they are PID 1's counters)."""
        run = self._run(vm_id, run_id)
        with run.out.lock, run.err.lock:  # not closed under us by a forget
            if run.out.count < 0 or run.err.count < 0:
                raise ArkerError(ErrorCode.NOT_FOUND, f"run {run_id!r} is forgotten")
            out = os.dup(run.out.count)
            try:
                return out, os.dup(run.err.count)
            except BaseException:
                os.close(out)
                raise

    def write_stdin(self, vm_id: str, run_id: str, data: bytes, timeout_s: float) -> int:
        """Write `data` to the run's open stdin, waiting up to `timeout_s` for
        the command to read; return how many bytes went in."""
        run = self._run(vm_id, run_id)
        deadline = time.monotonic() + timeout_s
        view, sent = memoryview(data), 0
        while view:
            fd = run.stdin
            if fd < 0:
                raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} has no open stdin")
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or run.ended():
                    break
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                poller.poll(min(left, 0.5) * 1000)  # re-checked: the run may end meanwhile
                continue
            except BrokenPipeError:
                raise ArkerError(
                    ErrorCode.CONFLICT, f"run {run_id!r} closed its stdin ({sent} bytes written)"
                ) from None
            view, sent = view[n:], sent + n
        return sent

    def close_stdin(self, vm_id: str, run_id: str) -> None:
        self._run(vm_id, run_id).close_stdin()

    def signal(self, vm_id: str, run_id: str, signum: int) -> None:
        """Send `signum` to the run's process group (PID 1 sends it)."""
        run = self._run(vm_id, run_id)
        if run.ended():
            raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} has ended")
        try:
            run.sock.send(b"k" + bytes([signum]))
        except OSError as exc:
            raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} has ended") from exc

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


def _pread(fd: int, n: int, at: int) -> bytes:
    """n bytes at `at` (PID 1 wrote them before it counted them)."""
    if fd < 0 or n <= 0:
        return b""
    data = os.pread(fd, n, at)
    return data.ljust(n, b"\0") if len(data) < n else data  # a failed write in PID 1


def _stdin(spec: RunSpec) -> tuple[int, int]:
    """The run's stdin for PID 1, and the engine's end of it (-1 unless kept
    open): `spec.stdin` in a memfd, /dev/null, or a pipe that starts with
    `spec.stdin` and takes more through `write_stdin`."""
    if not spec.stdin_open:
        if spec.stdin:
            return memfd("arker-stdin", spec.stdin), -1
        return fd_for("/dev/null", os.O_RDONLY), -1
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # more than 1 MiB is refused: the pipe stays 64 KiB
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, STDIN_PIPE_BYTES)
        if len(spec.stdin) > fcntl.fcntl(w, fcntl.F_GETPIPE_SZ):
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                "stdin with stdin_open holds at most "
                f"{fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)} bytes; send the rest to the run's stdin",
            )
        view = memoryview(spec.stdin)
        while view:
            view = view[os.write(w, view) :]
        os.set_blocking(w, False)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    return r, w


def _command(spec: RunSpec) -> tuple[list[str], dict[str, str]]:
    if "\0" in spec.command or "\0" in spec.cwd:
        raise ArkerError(ErrorCode.INVALID_REQUEST, "command and cwd must not contain NUL")
    if not spec.cwd.startswith("/"):
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"cwd must be absolute: {spec.cwd!r}")
    if spec.user not in USERS:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"unknown user {spec.user!r}")
    uid, _, home = USERS[spec.user]
    name = "root" if uid == 0 else "user"
    env = {"PATH": PATH, "HOME": home, "USER": name, "LOGNAME": name, "SHELL": "/bin/sh"}
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
        stdout_bytes=run.out.total,
        stderr_bytes=run.err.total,
        phase=phase,
        exit_code=result.get("exit_code"),
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=run.out.total > len(stdout),
        stderr_truncated=run.err.total > len(stderr),
        oom_killed=bool(result.get("oom_killed")),
        started_at=run.started_at,
        finished_at=finished,
        failure_reason=failure,
        warnings=run.warnings or (),
    )
