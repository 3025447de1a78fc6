"""`arker shell VM [--root]`: a terminal in a VM, as `ssh host` gives one.

The local terminal is put in raw mode (so Ctrl-C, Ctrl-Z and the rest are
bytes for the VM's terminal, not signals here), the VM's terminal gets this
window's size and every change of it (SIGWINCH), and the command's exit
status is this command's. The local terminal is restored however it ends.

Over the sync SDK: this thread prints what the VM's terminal shows; one
more thread sends what is typed, and the window's new size, which the
SIGWINCH handler only announces on a pipe (a handler must not send itself:
it may run in the middle of the connection's own work).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from arker.cli._connect import ApiKey, BaseUrl, Region, VmId, connect
from arker.cli._output import cli_errors, err_console

if TYPE_CHECKING:
    from arker import Pty

__all__ = ["register"]

READ_BYTES = 4096
# ssh's status when the session ends with none of the command's own.
EXIT_NO_STATUS = 255
_TERM = re.compile(r"[A-Za-z0-9._+-]{1,64}")


def shell(
    vm: VmId,
    root: Annotated[bool, typer.Option("--root", help="Log in as root, not as user.")] = False,
    command: Annotated[
        str | None,
        typer.Option("--command", "-c", help="Run this (by /bin/sh -c) instead of a login shell."),
    ] = None,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """A terminal in the VM: a login shell of user (uid 1000) or, with --root,
    of root. Exits with the shell's exit status."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    cols, rows = _size(stdout if os.isatty(stdout) else stdin)
    term = os.environ.get("TERM", "")
    with connect(api_key, region, base_url) as arker:
        pty = arker.vm(vm).pty(
            user="root" if root else "user",
            cols=cols,
            rows=rows,
            command=command,
            term=term if _TERM.fullmatch(term) else None,
        )
        with pty, _raw(stdin):
            _relay(pty, stdin, stdout)
    if pty.exit_code is None:
        err_console.print("arker: the terminal ended with no exit status (the vm was stopped?)")
        raise typer.Exit(EXIT_NO_STATUS)
    raise typer.Exit(pty.exit_code)


def _size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return max(1, min(size.columns, 1000)), max(1, min(size.lines, 1000))


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """Raw mode while the terminal is in use; a stdin that is no terminal
    (a pipe, a script) is read as it is."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _relay(pty: Pty, stdin: int, stdout: int) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def on_winch(_signum: int, _frame: object) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(wake_w, b"w")

    previous = signal.signal(signal.SIGWINCH, on_winch)
    typing = threading.Thread(target=_typed, args=(pty, stdin, stdout, wake_r), daemon=True)
    typing.start()
    try:
        while chunk := pty.recv():
            view = memoryview(chunk)
            while view:
                view = view[os.write(stdout, view) :]
    finally:
        signal.signal(signal.SIGWINCH, previous)
        os.close(wake_w)  # the typing thread sees EOF on the pipe and ends
        typing.join(timeout=1)
        os.close(wake_r)


def _typed(pty: Pty, stdin: int, stdout: int, wake: int) -> None:
    """Send what is typed and each new window size, until the pipe closes."""
    watched = [stdin, wake]
    with contextlib.suppress(Exception):  # the terminal ended: the main thread says how
        while True:
            ready, _, _ = select.select(watched, [], [])
            if wake in ready:
                if not os.read(wake, 64):
                    return
                pty.resize(*_size(stdout if os.isatty(stdout) else stdin))
            if stdin in ready:
                data = os.read(stdin, READ_BYTES)
                if not data:
                    watched.remove(stdin)  # a pipe ran dry; the VM's side goes on
                    continue
                pty.send(data)


def register(app: typer.Typer) -> None:
    """Add `shell` to the `arker` app."""
    app.command("shell")(cli_errors(shell))
