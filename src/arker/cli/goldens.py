"""`arker goldens build|import|ls`: base images on this host's engine.

These act on the local data directory, not over the API: goldens are part of
a deployment, made by whoever runs the server (as root, like the server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from arker.cli._output import (
    cli_errors,
    err_console,
    fail,
    out_console,
    print_json,
    step_progress,
)

if TYPE_CHECKING:
    from arker.engine.base import Engine, GoldenInfo

__all__ = ["DEFAULT_DATA_DIR", "app", "build_golden", "engine_at"]

DEFAULT_DATA_DIR = Path("/var/lib/arker")

app = typer.Typer(
    name="goldens", help="Build, import and list goldens on this host.", no_args_is_help=True
)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="The engine's data directory (as `arker serve` was given)."),
]


@contextmanager
def engine_at(data_dir: Path) -> Iterator[Engine]:
    """The local engine, opened on `data_dir` for the length of a command
    (building or listing goldens: no VM runs, so no network is set up)."""
    from arker.engine.host import NamespaceEngine

    engine = NamespaceEngine(data_dir, networking=False)
    engine.open()
    try:
        yield engine
    finally:
        engine.close()


@contextmanager
def _progress_bar(title: str) -> Iterator[Callable[[int, int | None, str], None]]:
    """A rich bar fed by the engine's progress(done, total, message) calls.
    The engine counts bytes or steps; the bar shows whichever it was given,
    and a spinner while the total is unknown."""
    with step_progress() as progress:
        task = progress.add_task(title, total=None)

        def report(done: int, total: int | None, message: str) -> None:
            desc = f"{title}: {message}" if message else title
            progress.update(task, completed=done, total=total, description=desc)

        yield report


def build_golden(engine: Engine, name: str) -> GoldenInfo:
    """Build `name` with a progress bar on stderr (also used by `arker demo`)."""
    with _progress_bar(f"building {name}") as report:
        return engine.build_golden(name, report)


def _iso(created_at: float) -> str:
    return datetime.fromtimestamp(created_at, tz=UTC).isoformat(timespec="seconds")


@app.command("build")
@cli_errors
def build(
    name: Annotated[str, typer.Argument(help="`debian` (bookworm) or `busybox`.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Build a known golden; one that is already there is kept as it is."""
    with engine_at(data_dir) as engine:
        info = build_golden(engine, name)
    err_console.print(f"golden {info.name} ready ({_iso(info.created_at)})")


@app.command("import")
@cli_errors
def import_(
    name: Annotated[str, typer.Argument(help="The name `fork` will accept.")],
    tarball: Annotated[
        Path,
        typer.Argument(
            help="A rootfs as .tar, .tar.gz or .tar.zst.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Import a root filesystem tarball as a golden."""
    with engine_at(data_dir) as engine, _progress_bar(f"importing {name}") as report:
        info = engine.import_golden(name, str(tarball.resolve()), report)
    err_console.print(f"golden {info.name} ready ({_iso(info.created_at)})")


@app.command("ls")
@cli_errors
def ls(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document, for scripts.")
    ] = False,
) -> None:
    """List the goldens on this host."""
    if not data_dir.is_dir():
        # Opening an engine makes its pool: listing should not create one.
        fail("not_found", f"no data directory at {data_dir} (pass --data-dir?)")
    with engine_at(data_dir) as engine:
        goldens = sorted(engine.goldens(), key=lambda g: g.name)
    if as_json:
        print_json(
            [
                {"name": g.name, "description": g.description, "created_at": _iso(g.created_at)}
                for g in goldens
            ]
        )
        return
    table = Table("name", "description", "created_at")
    for g in goldens:
        table.add_row(g.name, g.description or "", _iso(g.created_at))
    out_console.print(table)


def register(parent: typer.Typer) -> None:
    """Add `arker goldens ...` to the app."""
    parent.add_typer(app, name="goldens")
