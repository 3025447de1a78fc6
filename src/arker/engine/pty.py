"""Terminals: a login shell (or a command) on a pty in a VM.

A terminal is one message 'p' to the VM's PID 1 (native/agent.c), as a run
is one message 'r': PID 1 opens a pty of the VM's own devpts, forks the
command on it into the terminal's leaf cgroup (no privileges, seccomp, as a
run) with the pty as its controlling terminal, and hands the master back
over the terminal's socket. The engine keeps the master and nothing else of
the pty: bytes both ways, resizes (TIOCSWINSZ on the master), and the
socket, readable once the command has exited (PID 1's "d" with its exit
code) or the VM has gone (EOF). Ending a terminal kills its leaf's whole
tree, as a cancel does a run's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import select
import socket
import struct
import termios
import threading
from collections.abc import Callable, Mapping

from arker.engine._cgroups import RunCgroup
from arker.engine._pid1 import PATH, USERS, ask, fd_for, memfd, request
from arker.errors import ArkerError, ErrorCode

__all__ = ["MAX_SIZE", "Pty", "check_size", "start"]

MAX_SIZE = 1000  # columns or rows; a struct winsize holds 65535, no screen that many
DEFAULT_TERM = "xterm-256color"


def check_size(cols: int, rows: int) -> None:
    for name, value in (("cols", cols), ("rows", rows)):
        if not 1 <= value <= MAX_SIZE:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST, f"{name}: must be 1..{MAX_SIZE}, not {value}", 422
            )


class Pty:
    """One terminal: its master (non-blocking) and the socket to PID 1.

    `fileno()` is the master, for a selector; `read`/`write` move bytes;
    `exit_fileno()` becomes readable when the command has ended. Thread-safe
    enough for one reader, one writer and any number of `kill`/`close`."""

    def __init__(self, master: int, sock: socket.socket, end: Callable[[], None]) -> None:
        self._master = master
        self._sock = sock
        self._end = end  # kills the terminal's tree and removes its leaf
        self._lock = threading.Lock()
        self._done = False
        self._closed = False
        self.exit_code: int | None = None  # once done; None when the vm ended it

    def fileno(self) -> int:
        return self._master

    def exit_fileno(self) -> int:
        """Readable once the command has exited or the VM has gone."""
        return self._sock.fileno()

    def read(self, max_bytes: int = 65536, timeout_s: float | None = None) -> bytes:
        """Output, waiting up to `timeout_s` (None: as long as it takes) for
        some; b"" once no process in the VM holds the terminal any more.
        TimeoutError when nothing came in time."""
        if timeout_s != 0 and not _wait(self._master, select.POLLIN, timeout_s):
            raise TimeoutError("no output from the terminal")
        try:
            return os.read(self._master, max_bytes)
        except BlockingIOError as exc:
            raise TimeoutError("no output from the terminal") from exc
        except OSError as exc:
            if exc.errno == errno.EIO:  # Linux's EOF of a master whose slave is closed
                return b""
            raise

    def write(self, data: bytes | memoryview) -> int:
        """Bytes typed into the terminal; how many it took (maybe fewer: the
        master is non-blocking, BlockingIOError when it takes none now). A
        terminal the VM has let go of takes everything and drops it."""
        try:
            return os.write(self._master, data)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return len(data)
            raise

    def resize(self, cols: int, rows: int) -> None:
        """The window's new size; the terminal's foreground group gets SIGWINCH."""
        check_size(cols, rows)
        fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    @property
    def done(self) -> bool:
        """Whether the command has exited (or its VM gone); sets `exit_code`."""
        with self._lock:
            if not self._done and not self._closed and _wait(self._sock, select.POLLIN, 0):
                try:
                    msg = self._sock.recv(4096, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return False
                except OSError:
                    msg = b""
                if msg.startswith(b"d"):
                    self.exit_code = int(json.loads(msg[1:])["exit_code"])
                self._done = True
            return self._done

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The command's exit code once it has exited, None when its VM ended
        it; TimeoutError when it still runs after `timeout_s`."""
        if not self.done and not _wait(self._sock, select.POLLIN, timeout_s):
            raise TimeoutError("the terminal's command is still running")
        self.done  # noqa: B018 -- reads the result
        return self.exit_code

    def kill(self) -> None:
        """Kill every process of the terminal (the shell and all it started)."""
        self._end()

    def close(self) -> None:
        """Kill the terminal's tree and let go of its master and socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._end()
        with contextlib.suppress(OSError):
            os.close(self._master)
        self._sock.close()

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _wait(fd: int | socket.socket, events: int, timeout_s: float | None) -> bool:
    poller = select.poll()  # not select(): fds past 1024 are common in a server
    poller.register(fd, events)
    ms = None if timeout_s is None else max(0, math.ceil(timeout_s * 1000))
    return bool(poller.poll(ms))


def login_shell(passwd: bytes, uid: int) -> str:
    """The shell /etc/passwd gives `uid`, if it is a plain absolute path; else /bin/sh."""
    for line in passwd.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2] == str(uid):
            shell = fields[6].strip()
            if shell.startswith("/") and "\0" not in shell and ".." not in shell:
                return shell
    return "/bin/sh"


def start(
    agent: socket.socket,
    cg: RunCgroup,
    end: Callable[[], None],
    *,
    user: str,
    cols: int,
    rows: int,
    command: str | None,
    shell: str,
    env: Mapping[str, str] | None = None,
) -> Pty:
    """Have the VM's PID 1 (its channel: `agent`) start a terminal in leaf
    `cg`; `end` kills the terminal's tree. Without `command`, `shell` runs as
    a login shell."""
    check_size(cols, rows)
    if user not in USERS:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"unknown user {user!r}", 422)
    if command is not None and "\0" in command:
        raise ArkerError(ErrorCode.INVALID_REQUEST, "command must not contain NUL", 422)
    uid, gid, home = USERS[user]
    name = "root" if uid == 0 else "user"
    environ = {"PATH": PATH, "HOME": home, "USER": name, "LOGNAME": name, "SHELL": shell}
    environ["TERM"] = DEFAULT_TERM
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"invalid environment variable {key!r}")
        environ[key] = value
    argv = [shell, "-l"] if command is None else ["/bin/sh", "-c", command]
    fds: list[int] = []
    try:
        fds.append(memfd("arker-pty", request(uid, gid, 0, 0, home, argv, environ)))
        fds.append(memfd("arker-pty-size", struct.pack("HHHH", rows, cols, 0, 0)))
        fds.append(fd_for(cg.leaf, os.O_RDONLY | os.O_DIRECTORY))
        ours, got = ask(agent, b"p", fds, "terminal", fds_back=1)
    finally:
        for fd in fds:
            os.close(fd)
    os.set_blocking(got[0], False)
    return Pty(got[0], ours, end)
