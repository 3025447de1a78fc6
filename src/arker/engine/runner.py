"""Runs: spawn `arkervm exec` for a command, follow it, cancel it.

Each run has a spool directory, the only place its output lives:

    <runs_dir>/<vm_id>/<run_id>/
        stdin env           what the helper feeds the command
        stdout stderr       output, each capped by the helper
        result.json         written (atomically) by the helper when the run ends
        lost                written by a restarted engine for runs it lost
        helper.err          the helper's own complaints, if any

The helper, not this process, copies output and enforces the timeout, so a
run keeps going (and its result lands on disk) even while the server is busy
or restarting. Popen objects are kept only to wait and to signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from arker.engine._cgroups import Cgroups
from arker.engine.base import RunInfo, RunPhase, RunSpec
from arker.engine.jail import InitProcess
from arker.errors import ArkerError, ErrorCode

__all__ = ["Runner"]

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_USERS = {"user": (1000, 1000, "/home/user"), "root": (0, 0, "/root")}


class Runner:
    """Start and follow runs; thread-safe."""

    def __init__(self, helper: Path, runs_dir: Path, cgroups: Cgroups) -> None:
        self.helper = helper
        self.runs_dir = runs_dir
        self.cgroups = cgroups
        self._procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def spool(self, vm_id: str, run_id: str) -> Path:
        return self.runs_dir / vm_id / run_id

    def in_flight(self, vm_id: str) -> set[str]:
        with self._lock:
            return {r for (v, r), p in self._procs.items() if v == vm_id and p.poll() is None}

    def start(self, vm_id: str, run_id: str, spec: RunSpec, init: InitProcess) -> None:
        """Spawn the helper for `spec` in the VM whose PID 1 is `init`."""
        argv, env = _command(spec)
        spool = self.spool(vm_id, run_id)
        try:
            spool.mkdir(parents=True)
        except FileExistsError:
            raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} already exists") from None
        uid, gid, _ = _USERS[spec.user]
        (spool / "env").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        stdin = "/dev/null"
        if spec.stdin:
            (spool / "stdin").write_bytes(spec.stdin)
            stdin = str(spool / "stdin")
        (spool / "meta.json").write_text(json.dumps({"started_at": time.time()}))
        cg = self.cgroups.create_run(vm_id, run_id)
        cmd = [str(self.helper), "exec", "--pid", str(init.pid)]
        cmd += ["--start-time", str(init.start_time)]
        for p in cg.procs:
            cmd += ["--cgroup-procs", p]
        cmd += ["--kill-cgroup", cg.kill_dir, "--oom-file", cg.oom_file]
        cmd += ["--uid", str(uid), "--gid", str(gid), "--cwd", spec.cwd]
        cmd += ["--env-file", str(spool / "env"), "--stdin", stdin]
        cmd += ["--stdout", str(spool / "stdout"), "--stderr", str(spool / "stderr")]
        cmd += ["--cap-bytes", str(max(0, spec.output_cap_bytes))]
        if spec.timeout_s is not None:
            cmd += ["--timeout-ms", str(max(1, math.ceil(spec.timeout_s * 1000)))]
        cmd += ["--result", str(spool / "result.json"), "--", *argv]
        try:
            with open(spool / "helper.err", "wb") as err:
                # Its own session: a Ctrl-C meant for the server must not
                # reach the helper, which would take it as a cancel.
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,
                )
        except OSError as exc:
            shutil.rmtree(spool, ignore_errors=True)
            self.cgroups.sweep_runs(vm_id, self.in_flight(vm_id))
            raise ArkerError(ErrorCode.UNAVAILABLE, f"cannot spawn the run helper: {exc}") from exc
        with self._lock:
            self._procs[(vm_id, run_id)] = proc
            # Reap helpers that ended but nobody waited for (background runs
            # never polled): a finished helper is a zombie until polled.
            for other in self._procs.values():
                other.poll()

    def wait(self, vm_id: str, run_id: str, timeout_s: float | None = None) -> RunInfo:
        proc = self._proc(vm_id, run_id)
        if proc is not None:
            _wait_exit(proc, timeout_s)
        return self.info(vm_id, run_id)

    def info(self, vm_id: str, run_id: str) -> RunInfo:
        """The run as its spool shows it now."""
        spool = self.spool(vm_id, run_id)
        try:
            meta = json.loads((spool / "meta.json").read_text())
        except FileNotFoundError:
            raise ArkerError(ErrorCode.NOT_FOUND, f"no run {run_id!r} in vm {vm_id!r}") from None
        if (spool / "lost").exists():
            # Written at restart for runs with no result yet; whatever their
            # orphaned helper records after that describes a run we killed.
            reason = (spool / "lost").read_text() or "lost"
            return self._failed(spool, meta, reason)
        proc = self._proc(vm_id, run_id)
        result = _read_json(spool / "result.json")
        if result is None and proc is not None and proc.poll() is not None:
            result = _read_json(spool / "result.json")  # it may have landed just now
            if result is None:
                return self._failed(spool, meta, _helper_error(spool, proc.returncode))
        if result is None and proc is None:
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
        """Kill the run's tree (through the helper, which records it)."""
        info = self.info(vm_id, run_id)
        if info.done:
            return info
        proc = self._proc(vm_id, run_id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        spool = self.spool(vm_id, run_id)
        if not (spool / "result.json").exists():
            # The helper ended before it could record the cancel (it was killed
            # as it started, or belongs to a dead server): record it here.
            self.cgroups.kill_run(vm_id, run_id)
            result = {"exit_code": None, "cancelled": True, "finished_at": time.time()}
            tmp = spool / "result.json.tmp"
            tmp.write_text(json.dumps(result))
            os.replace(tmp, spool / "result.json")
        return self.info(vm_id, run_id)

    def forget(self, vm_id: str, run_id: str) -> None:
        with self._lock:
            proc = self._procs.pop((vm_id, run_id), None)
        if proc is not None and proc.poll() is None:
            with self._lock:  # still running: keep following it
                self._procs[(vm_id, run_id)] = proc
            raise ArkerError(ErrorCode.CONFLICT, f"run {run_id!r} is still running")
        shutil.rmtree(self.spool(vm_id, run_id), ignore_errors=True)

    def end_vm(self, vm_id: str, reason: str) -> list[subprocess.Popen[bytes]]:
        """Mark the VM's runs in flight as failed for `reason` (its processes
        are about to be killed); return their helpers so the caller can reap
        them once the kill is done."""
        with self._lock:
            live = [(r, p) for (v, r), p in self._procs.items() if v == vm_id and p.poll() is None]
        for run_id, _ in live:
            spool = self.spool(vm_id, run_id)
            if not (spool / "result.json").exists():
                (spool / "lost").write_text(reason)
        return [p for _, p in live]

    def forget_vm(self, vm_id: str) -> None:
        """Drop every run of a deleted VM (its processes are already dead)."""
        with self._lock:
            procs = [p for (v, _), p in self._procs.items() if v == vm_id]
            self._procs = {k: p for k, p in self._procs.items() if k[0] != vm_id}
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
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

    def _proc(self, vm_id: str, run_id: str) -> subprocess.Popen[bytes] | None:
        with self._lock:
            return self._procs.get((vm_id, run_id))


def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float | None) -> None:
    """Wait for the helper to exit, for at most `timeout_s`. Popen.wait with a
    timeout polls with sleeps that double up to 50 ms, so a 4 ms run was seen
    ended 7-15 ms late; a pidfd wakes us the moment the helper exits."""
    if timeout_s is None:
        proc.wait()
        return
    try:
        fd = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):  # no pidfd on this kernel: poll as before
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
        return
    try:
        # Unreaped after the pidfd was opened means the pidfd is our helper's
        # (its pid cannot have been reused), so waiting on it is safe.
        if proc.poll() is None:
            poller = select.poll()  # not select(): fds past 1024 are common in a server
            poller.register(fd, select.POLLIN)
            poller.poll(math.ceil(timeout_s * 1000))
            proc.poll()
    finally:
        os.close(fd)


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


def _helper_error(spool: Path, returncode: int | None) -> str:
    msg = _read(spool / "helper.err").decode(errors="replace").strip()
    return msg or f"the run's helper exited with status {returncode} and no result"


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
