"""Asking a VM's PID 1 (native/agent.c) to start something: a run ('r') or a
terminal ('p'). Both are one message over the VM's agent socket carrying a
socket of their own (its first fd) and a memfd with the request's
NUL-separated fields; PID 1 answers on that socket with "s" once the process
is started, "P..." (refused: the VM is full), "E..." (failed) or nothing (it
went away). runner.py and pty.py differ only in the fds they add.
"""

from __future__ import annotations

import os
import socket

from arker.errors import ArkerError, ErrorCode

__all__ = ["PATH", "USERS", "ask", "fd_for", "memfd", "request"]

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USERS = {"user": (1000, 1000, "/home/user"), "root": (0, 0, "/root")}
START_TIMEOUT_S = 30.0


def request(
    uid: int, gid: int, cap: int, timeout_ms: int, cwd: str, argv: list[str], env: dict[str, str]
) -> bytes:
    """The fields PID 1 reads: ids, output cap, timeout, cwd, argv, environ."""
    fields = [str(uid), str(gid), str(cap), str(timeout_ms), cwd, str(len(argv)), *argv]
    fields += [f"{k}={v}" for k, v in env.items()]
    return b"".join(f.encode() + b"\0" for f in fields)


def ask(
    agent: socket.socket, kind: bytes, fds: list[int], what: str, *, fds_back: int = 0
) -> tuple[socket.socket, list[int]]:
    """Send message `kind` with `fds` (after the start's own socket) and wait
    for "started"; return that socket and the fds PID 1 sent back with its
    answer. Failures are ArkerErrors naming `what` ("run", "terminal"). The
    caller keeps (and closes) `fds`."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            socket.send_fds(agent, [kind], [theirs.fileno(), *fds])
        except OSError as exc:  # EPIPE: PID 1 is gone; timeout: it is stuck
            raise ArkerError(
                ErrorCode.UNAVAILABLE, f"the vm's init did not take the {what}: {exc}"
            ) from exc
        theirs.close()
        ours.settimeout(START_TIMEOUT_S)
        try:
            answer, got, _, _ = socket.recv_fds(
                ours, 4096, max(fds_back, 1), socket.MSG_CMSG_CLOEXEC
            )
        except OSError as exc:
            raise ArkerError(
                ErrorCode.UNAVAILABLE, f"the vm's init did not start the {what}: {exc}"
            ) from exc
        ours.settimeout(None)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    if answer == b"s" and len(got) == fds_back:
        return ours, got
    for fd in got:
        os.close(fd)
    ours.close()
    reason = answer[1:].decode(errors="replace")
    if answer.startswith(b"P"):
        raise ArkerError(ErrorCode.CONFLICT, f"cannot start the {what}: {reason}")
    if answer.startswith(b"E") or answer == b"s":
        raise ArkerError(ErrorCode.INTERNAL, f"cannot start the {what}: {reason or 'no fd'}")
    raise ArkerError(ErrorCode.UNAVAILABLE, f"the vm stopped as the {what} was starting")


def fd_for(path: str, flags: int, missing_ok: bool = False) -> int:
    """An fd for PID 1; with `missing_ok`, /dev/null stands in for a file this
    kernel lacks (cgroup.kill before 5.14, an oom counter)."""
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)


def memfd(name: str, data: bytes) -> int:
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
