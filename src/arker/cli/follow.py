"""Following a run from the command line: its output as it arrives, then its
exit status as arker's (`arker run`, `arker logs --follow`)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import typer

from arker.cli._output import err_console, write_stderr, write_stdout

if TYPE_CHECKING:
    from arker import RunHandle, RunStatus

__all__ = ["EXIT_CANCELLED", "EXIT_TIMED_OUT", "exit_with", "follow", "notes"]

# Exit statuses for runs that did not end by themselves, after coreutils'
# `timeout` (124) and the shell's convention for SIGINT (130).
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130


def follow(handle: RunHandle, *, cancel_on_interrupt: bool) -> RunStatus:
    """Print the run's bytes as they come, as they are (no decoding); return
    its final status. Ctrl-C cancels the run when `cancel_on_interrupt`
    (the run was started here), else only stops following it."""
    try:
        for event in handle.events():
            if event.type == "stdout":
                write_stdout(event.data)
            elif event.type == "stderr":
                write_stderr(event.data)
            elif event.type == "gap":
                err_console.print(
                    f"arker: {event.gap_bytes} bytes of {event.stream} are gone "
                    "(past the server's output cap)"
                )
            elif event.status is not None:
                return event.status
    except KeyboardInterrupt:
        if cancel_on_interrupt:
            with contextlib.suppress(Exception):
                handle.cancel()
            err_console.print(f"arker: cancelled run {handle.run_id}")
        raise typer.Exit(EXIT_CANCELLED) from None
    raise typer.Exit(1)  # the stream ended without an end: reported by the SDK


def notes(result: Any) -> None:
    for stream in ("stdout", "stderr"):
        if getattr(result, f"{stream}_truncated", False):
            err_console.print(f"arker: {stream} was cut at the server's output cap")
    if getattr(result, "oom_killed", False):
        err_console.print("arker: the VM's memory limit killed the command")


def exit_with(status: RunStatus, timeout_s: float | None = None) -> None:
    """Leave with the run's status as arker's exit status."""
    notes(status)
    if status.state == "completed":
        code = status.exit_code if status.exit_code is not None else 1
        # A status the shell cannot hold (it keeps the low 8 bits) must not
        # turn a failure into 0.
        raise typer.Exit(code if 0 <= code <= 255 else 1)
    if status.state == "timed_out":
        after = f" after {timeout_s:g} s" if timeout_s else ""
        err_console.print(f"arker: timed out{after} (run {status.run_id})")
        raise typer.Exit(EXIT_TIMED_OUT)
    if status.state == "failed":
        err_console.print(f"arker: run {status.run_id} failed: {status.failure_reason}")
        raise typer.Exit(1)
    err_console.print(f"arker: run {status.run_id} was cancelled")
    raise typer.Exit(EXIT_CANCELLED)
