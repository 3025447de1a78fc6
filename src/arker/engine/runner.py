"""Runs: hand a command to the VM's PID 1, follow it, cancel it.

Each run has a spool directory, the only place its output lives:

    <runs_dir>/<vm_id>/<run_id>/
        meta.json           when it started
        stdout stderr       output, each capped by PID 1
        result.json         written (atomically) by PID 1 when the run ends
        lost                written by a restarted engine for runs it lost

A run is one message to the VM's PID 1 (native/agent.c) carrying the
command and open files: the spool's, the run's leaf cgroup and its
cgroup.kill. PID 1 forks the command straight into that cgroup, copies its
output and enforces its timeout, so a run keeps going (and its result lands
on disk) even while the server is busy or restarting. The engine keeps the
run's own socket to PID 1: readable once the run has ended, the way to
cancel it, and at EOF if the VM died under it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import select
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from arker.engine._cgroups import Cgroups, RunCgroup
from arker.engine.base import RunInfo, RunPhase, RunSpec
from arker.engine.jail import InitProcess
from arker.errors import ArkerError, ErrorCode

__all__ = ["Runner"]

_START_TIMEOUT_S = 30.0
_CANCEL_TIMEOUT_S = 10.0
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_USERS = {"user": (1000, 1000, "/home/user"), "root": (0, 0, "/root")}


class _Run:
    """The engine's end of one run's socket to PID 1."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def ended(self, timeout_s: float | None = 0.0) -> bool:
        """Whether PID 1 said "done" or went away, waiting up to `timeout_s`
        (None: for as long as it takes). Nothing is read, so any number of
        threads may ask."""
        poller = select.poll()  # not select(): fds past 1024 are common in a server
        poller.register(self.sock, select.POLLIN)
        ms = None if timeout_s is None else max(0, math.ceil(timeout_s * 1000))
        return bool(poller.poll(ms))

    def complaint(self) -> str | None:
        """PID 1's error about this run ("E..."), if that is what it sent."""
        try:
            msg = self.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return None
        return msg[1:].decode(errors="replace") if msg.startswith(b"E") else None


class Runner:
    """Start and follow runs; thread-safe."""

    def __init__(self, helper: Path, runs_dir: Path, cgroups: Cgroups) -> None:
        self.helper = helper
        self.runs_dir = runs_dir
        self.cgroups = cgroups
        self._runs: dict[tuple[str, str], _Run] = {}
        self._lock = threading.Lock()

    def spool(self, vm_id: str, run_id: str) -> Path:
        return self.runs_dir / vm_id / run_id

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
        # Strings and fds relative to the spool, not Paths: this is every run's path.
        spool = f"{self.runs_dir}/{vm_id}/{run_id}"
        try:
            _mkdir(spool)
        except FileExistsError:
            raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} already exists") from None
        try:
            spool_fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                meta = json.dumps({"started_at": time.time()}).encode()
                _write_at(spool_fd, "meta.json", meta)
                cg = self.cgroups.create_run(vm_id, run_id)
                sock = self._send(init.agent, spool_fd, cg, spec, argv, env)
            finally:
                os.close(spool_fd)
        except BaseException:
            shutil.rmtree(spool, ignore_errors=True)
            self.cgroups.sweep_runs(vm_id, self.in_flight(vm_id))
            raise
        with self._lock:
            self._runs[(vm_id, run_id)] = _Run(sock)

    def _send(
        self,
        agent: socket.socket,
        spool_fd: int,
        cg: RunCgroup,
        spec: RunSpec,
        argv: list[str],
        env: dict[str, str],
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
            out_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            fds.append(_open("stdout", out_flags, dir_fd=spool_fd))
            fds.append(_open("stderr", out_flags, dir_fd=spool_fd))
            fds.append(_open(cg.leaf, os.O_RDONLY | os.O_DIRECTORY))
            fds.append(_open(f"{cg.leaf}/cgroup.kill", os.O_WRONLY, missing_ok=True))
            fds.append(_open(cg.oom_file, os.O_RDONLY, missing_ok=True))
            fds.append(os.dup(spool_fd))
            try:
                socket.send_fds(agent, [b"r"], [theirs.fileno(), *fds])
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
        run = self._run(vm_id, run_id)
        if run is not None:
            run.ended(timeout_s)
        return self.info(vm_id, run_id)

    def info(self, vm_id: str, run_id: str) -> RunInfo:
        """The run as its spool shows it now."""
        spool = self.spool(vm_id, run_id)
        try:
            meta = json.loads((spool / "meta.json").read_text())
        except FileNotFoundError:
            raise ArkerError(ErrorCode.NOT_FOUND, f"no run {run_id!r} in vm {vm_id!r}") from None
        if (spool / "lost").exists():
            # Written at restart (or as the VM was stopped) for runs with no
            # result yet; whatever PID 1 records after that describes a run
            # we killed.
            reason = (spool / "lost").read_text() or "lost"
            return self._failed(spool, meta, reason)
        run = self._run(vm_id, run_id)
        result = _read_json(spool / "result.json")
        if result is None and run is not None and run.ended():
            result = _read_json(spool / "result.json")  # it may have landed just now
            if result is None:
                reason = run.complaint() or "the vm's init ended before the run did"
                return self._failed(spool, meta, reason)
        if result is None and run is None:
            return self._failed(spool, meta, "no process follows this run any more")
        if result is None:
            return _info(spool, RunPhase.RUNNING, meta["started_at"], None, {})
        if result.get("timed_out"):
            phase = RunPhase.TIMED_OUT
        elif result.get("cancelled"):
            phase = RunPhase.CANCELLED
        else:
            phase = RunPhase.COMPLETED
        return _info(spool, phase, meta["started_at"], result["finished_at"], result)

    def _failed(self, spool: Path, meta: dict[str, Any], reason: str) -> RunInfo:
        info = _info(spool, RunPhase.FAILED, meta["started_at"], time.time(), {})
        return dataclasses.replace(info, failure_reason=reason)

    def cancel(self, vm_id: str, run_id: str) -> RunInfo:
        """Kill the run's tree (through PID 1, which records it)."""
        info = self.info(vm_id, run_id)
        if info.done:
            return info
        run = self._run(vm_id, run_id)
        if run is not None and not run.ended():
            with contextlib.suppress(OSError):  # PID 1 let go: the run ended or the VM died
                run.sock.send(b"c")
            run.ended(_CANCEL_TIMEOUT_S)
        spool = self.spool(vm_id, run_id)
        if not (spool / "result.json").exists():
            # PID 1 could not record the cancel (the VM died, or it belongs to
            # a dead server): kill what is left and record it here.
            self.cgroups.kill_run(vm_id, run_id)
            result = {"exit_code": None, "cancelled": True, "finished_at": time.time()}
            tmp = spool / "result.json.tmp"
            tmp.write_text(json.dumps(result))
            os.replace(tmp, spool / "result.json")
        return self.info(vm_id, run_id)

    def forget(self, vm_id: str, run_id: str) -> None:
        with self._lock:
            run = self._runs.get((vm_id, run_id))
            if run is not None and not run.ended():
                raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} is still running")
            self._runs.pop((vm_id, run_id), None)
        if run is not None:
            run.sock.close()
        shutil.rmtree(self.spool(vm_id, run_id), ignore_errors=True)

    def end_vm(self, vm_id: str, reason: str) -> None:
        """Mark the VM's runs in flight as failed for `reason`: its processes
        are about to be killed, and a run killed so is no command's doing."""
        for run_id in self.in_flight(vm_id):
            spool = self.spool(vm_id, run_id)
            if not (spool / "result.json").exists():
                (spool / "lost").write_text(reason)

    def forget_vm(self, vm_id: str) -> None:
        """Drop every run of a deleted VM (its processes are already dead)."""
        with self._lock:
            runs = [h for (v, _), h in self._runs.items() if v == vm_id]
            self._runs = {k: h for k, h in self._runs.items() if k[0] != vm_id}
        for run in runs:
            run.sock.close()
        shutil.rmtree(self.runs_dir / vm_id, ignore_errors=True)

    def mark_lost(self, reason: str) -> int:
        """After a restart: every run with no result is lost; return how many."""
        lost = 0
        if not self.runs_dir.is_dir():
            return 0
        for vm_dir in self.runs_dir.iterdir():
            for spool in vm_dir.iterdir() if vm_dir.is_dir() else []:
                if not (spool / "result.json").exists() and not (spool / "lost").exists():
                    (spool / "lost").write_text(reason)
                    lost += 1
        return lost

    def _run(self, vm_id: str, run_id: str) -> _Run | None:
        with self._lock:
            return self._runs.get((vm_id, run_id))


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileNotFoundError:  # the VM's first run
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)


def _write_at(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _open(path: str, flags: int, missing_ok: bool = False, dir_fd: int | None = None) -> int:
    """An fd for PID 1; with `missing_ok`, /dev/null stands in for a file this
    kernel lacks (cgroup.kill before 5.14, an oom counter)."""
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _info(
    spool: Path, phase: RunPhase, started: float, finished: float | None, result: dict[str, Any]
) -> RunInfo:
    return RunInfo(
        phase=phase,
        exit_code=result.get("exit_code"),
        stdout=_read(spool / "stdout"),
        stderr=_read(spool / "stderr"),
        stdout_truncated=bool(result.get("stdout_truncated")),
        stderr_truncated=bool(result.get("stderr_truncated")),
        oom_killed=bool(result.get("oom_killed")),
        started_at=started,
        finished_at=finished,
    )
