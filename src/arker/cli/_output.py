"""What every `arker` command shares: where output goes and how failures read.

A failure a user can cause prints one line, `error: <code>: <message>`, to
stderr and exits 1. Tracebacks are for bugs, and even those print one line
unless ARKER_DEBUG=1 asks for the whole story.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn, ParamSpec, TextIO, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from arker.errors import ArkerError

__all__ = [
    "CliError",
    "bytes_progress",
    "cli_errors",
    "err_console",
    "fail",
    "out_console",
    "print_json",
    "spinner",
    "step_progress",
    "write_stderr",
    "write_stdout",
]

_CHUNK_BYTES = 1024 * 1024

P = ParamSpec("P")
R = TypeVar("R")

# Rich output for people goes to stderr so that stdout stays the data a script
# pipes on (an id, a file, a command's output); tables are the data of `ls`.
err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


class CliError(Exception):
    """A failure the command line itself detects (bad argument shape, a
    missing file); printed like an ArkerError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def fail(code: str, message: str) -> NoReturn:
    raise CliError(code, message)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def print_error(code: str, message: str) -> None:
    # Plain write, not rich: a message may hold [brackets] rich would eat.
    sys.stderr.write(f"error: {code}: {_one_line(message)}\n")
    sys.stderr.flush()


def cli_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn anything a command raises into one stderr line and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:
            # The reader went away (`arker cat ... | head`): stop quietly, as
            # tools killed by SIGPIPE do, and keep Python from complaining
            # when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141) from None
        except ArkerError as exc:
            print_error(str(exc.code), exc.message)
        except CliError as exc:
            print_error(exc.code, exc.message)
        except OSError as exc:
            # Local files: a missing one reads like the server's not_found.
            code = "not_found" if isinstance(exc, FileNotFoundError) else "os_error"
            where = f": {exc.filename}" if exc.filename else ""
            print_error(code, f"{exc.strerror or exc}{where}")
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("ARKER_DEBUG") == "1":
                raise
            print_error("internal", f"{type(exc).__name__}: {exc} (ARKER_DEBUG=1 shows more)")
        raise typer.Exit(1)

    return wrapper


def _write_raw(stream: TextIO, data: bytes) -> None:
    stream.flush()  # keep earlier text writes ahead of these bytes
    # In chunks: one huge write into a pipe whose reader has gone can come
    # back short rather than failing, and a closed pipe should be noticed.
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK_BYTES):
        stream.buffer.write(view[start : start + _CHUNK_BYTES])
        stream.buffer.flush()


def write_stdout(data: bytes) -> None:
    _write_raw(sys.stdout, data)


def write_stderr(data: bytes) -> None:
    _write_raw(sys.stderr, data)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def print_json(doc: Any) -> None:
    """One JSON document on stdout, for scripts."""
    sys.stdout.write(json.dumps(doc, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


@contextmanager
def bytes_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar over `total` bytes on stderr; yields `advance(n)`. Hidden when
    stderr is not a terminal, so scripts and logs get no redraw noise."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """For a wait whose size nobody knows yet: says what is going on and for
    how long, and nothing more."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    with progress:
        progress.add_task(description, total=None)
        yield


def step_progress() -> Progress:
    """A bar for work counted in steps or bytes the caller does not name
    (golden builds report either)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
    )
