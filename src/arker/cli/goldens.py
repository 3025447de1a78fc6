"""`arker goldens build|import|ls|rm`: base images of this host.

With no server on the data directory they act on its engine directly. While
`arker serve` holds the pool they go through its API instead (the URL it
wrote in `server.json`, or --base-url), with an admin key: --api-key, else
a temporary one made in the server's database and revoked when done. What
they make is for every org, as a golden built on the host always was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
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
    from arker import Arker
    from arker.engine.base import Engine, GoldenInfo

__all__ = ["DEFAULT_DATA_DIR", "app", "build_golden", "engine_at"]

DEFAULT_DATA_DIR = Path("/var/lib/arker")

app = typer.Typer(
    name="goldens",
    help="Build, import, list and remove goldens on this host (through its server, if one runs).",
    no_args_is_help=True,
)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="The engine's data directory (as `arker serve` was given)."),
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="ARKER_DATABASE_URL",
        help="The running server's database, for its temporary admin key (default: SQLite).",
    ),
]
BaseUrl = Annotated[
    str | None,
    typer.Option("--base-url", help="The running server's API (default: from its server.json)."),
]
AdminKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="ARKER_ADMIN_KEY",
        help="An admin key of the running server (default: a temporary one).",
    ),
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


def _pool_in_use(data_dir: Path) -> bool:
    """Whether another process (a server) holds the pool's lock."""
    try:
        fd = os.open(data_dir / ".pool.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock, if it was taken
    return False


def _server_url(data_dir: Path, base_url: str | None) -> str | None:
    """The API to go through, or None to act on the local engine."""
    from arker.server.address import read_address

    if base_url:
        return base_url
    if not _pool_in_use(data_dir):
        return None
    url = read_address(data_dir)
    if url is None:
        fail(
            "unavailable",
            f"pool {data_dir} is in use by another process that names no API "
            "(no server.json): pass --base-url and --api-key",
        )
    return url


@contextmanager
def _api(
    url: str, data_dir: Path, database_url: str | None, api_key: str | None
) -> Iterator[Arker]:
    """A client of the running server with an admin key."""
    from arker import Arker
    from arker.cli.server import create_key, revoke_key

    key_id = None
    if api_key is None:
        key_id, api_key = create_key(
            data_dir, "arker goldens (temporary)", "arker-admin", database_url, admin=True
        )
    try:
        with Arker(api_key=api_key, base_url=url, timeout_s=600.0) as arker:
            yield arker
    finally:
        if key_id is not None:
            revoke_key(data_dir, key_id, database_url)


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


def _import_through(arker: Arker, name: str, tarball: Path, description: str | None) -> str:
    """Import for every org; the golden's created_at, once it is there."""
    with _progress_bar(f"importing {name}"):
        op = arker.import_golden(name, tarball, description=description, for_all=True)
    assert op.golden is not None
    return op.golden.created_at.isoformat(timespec="seconds")


def _spool_dir(data_dir: Path) -> Path:
    where = data_dir / "tmp"
    where.mkdir(parents=True, exist_ok=True)
    return where


_STEP_OPTIONS = ("--run", "--copy", "--env", "--workdir", "--user")


def _ordered_steps(args: list[str]) -> list[tuple[str, str]]:
    """The step options as given, in order (typer would group them by name)."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        option, eq, value = args[i].partition("=")
        if option not in _STEP_OPTIONS:
            raise typer.BadParameter(f"unexpected {args[i]!r} (NAME comes first)")
        if not eq:
            if i + 1 >= len(args):
                raise typer.BadParameter(f"{option} needs a value")
            i += 1
            value = args[i]
        out.append((option, value))
        i += 1
    return out


@contextmanager
def _server_for_build(
    data_dir: Path, base_url: str | None, database_url: str | None
) -> Iterator[str]:
    """The running server's API; with none, one started for the build."""
    url = _server_url(data_dir, base_url)
    if url is not None:
        yield url
        return
    from arker.cli.demo import embedded_server

    data_dir.mkdir(parents=True, exist_ok=True)
    serve_args = ["--database-url", database_url] if database_url else []
    with embedded_server(data_dir, data_dir / "build-server.log", serve_args=serve_args) as url:
        yield url


@app.command("build", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@cli_errors
def build(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="`debian` (bookworm) or `busybox`; or the golden to build.")
    ],
    base: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Build from steps on this golden, given after NAME in order: --run CMD, "
            "--copy SRC:DEST (into /home/user), --env K=V, --workdir DIR, --user user|root.",
        ),
    ] = None,
    dockerfile: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Build from a Dockerfile of FROM <golden>, RUN, ENV, WORKDIR, COPY, USER.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Run every step; keep no layers.")
    ] = False,
    step_timeout_s: Annotated[
        float, typer.Option("--step-timeout-s", help="The longest one RUN may take.")
    ] = 1800.0,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DbUrl = None,
    base_url: BaseUrl = None,
    api_key: AdminKey = None,
) -> None:
    """Build a known golden (one already there is kept as it is), or a golden
    from steps: a fork of --from (or the Dockerfile's FROM) runs them, with
    egress, and is published; each step's result is cached."""
    ordered = _ordered_steps(ctx.args)
    if base is not None or dockerfile is not None or ordered:
        _build_from_steps(
            name,
            base,
            dockerfile,
            ordered,
            cache=not no_cache,
            step_timeout_s=step_timeout_s,
            data_dir=data_dir,
            database_url=database_url,
            base_url=base_url,
            api_key=api_key,
        )
        return
    url = _server_url(data_dir, base_url)
    if url is None:
        with engine_at(data_dir) as engine:
            info = build_golden(engine, name)
        err_console.print(f"golden {info.name} ready ({_iso(info.created_at)})")
        return
    from arker.engine.goldens import build_tarball

    with _api(url, data_dir, database_url, api_key) as arker:
        found = next((g for g in arker.goldens() if g.name == name), None)
        if found is not None:
            err_console.print(f"golden {name} ready ({found.created_at.isoformat()})")
            return
        # Built here, as the server would, into a tarball that it imports.
        tarball = _spool_dir(data_dir) / f".build-{name}-{os.getpid()}.tar"
        try:
            with _progress_bar(f"building {name}") as report:
                description = build_tarball(name, tarball, report)
            created = _import_through(arker, name, tarball, description)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tarball.unlink()
    err_console.print(f"golden {name} ready ({created})")


def _build_from_steps(
    name: str,
    base: str | None,
    dockerfile: Path | None,
    ordered: list[tuple[str, str]],
    *,
    cache: bool,
    step_timeout_s: float,
    data_dir: Path,
    database_url: str | None,
    base_url: str | None,
    api_key: str | None,
) -> None:
    from arker.cli.golden_build import build_from_steps
    from arker.cli.golden_steps import from_dockerfile, from_options

    if dockerfile is not None:
        if base is not None or ordered:
            fail("invalid_request", "give --file or --from with steps, not both")
        spec = from_dockerfile(dockerfile)
    else:
        if base is None:
            fail("invalid_request", "steps need --from <golden> (or --file <Dockerfile>)")
        spec = from_options(base, ordered)
    with (
        _server_for_build(data_dir, base_url, database_url) as url,
        _api(url, data_dir, database_url, api_key) as arker,
    ):
        built = build_from_steps(
            arker,
            name,
            spec,
            for_all=True,
            cache=cache,
            step_timeout_s=step_timeout_s,
            say=lambda line: err_console.print(line, markup=False, highlight=False),
        )
    err_console.print(
        f"golden {built.golden.name} ready: {built.ran} steps run, {built.cached} from the cache"
    )


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
    database_url: DbUrl = None,
    base_url: BaseUrl = None,
    api_key: AdminKey = None,
) -> None:
    """Import a root filesystem tarball as a golden."""
    url = _server_url(data_dir, base_url)
    if url is None:
        with engine_at(data_dir) as engine, _progress_bar(f"importing {name}") as report:
            info = engine.import_golden(name, str(tarball.resolve()), report)
        err_console.print(f"golden {info.name} ready ({_iso(info.created_at)})")
        return
    with _api(url, data_dir, database_url, api_key) as arker:
        created = _import_through(arker, name, tarball, f"imported from {tarball.name}")
    err_console.print(f"golden {name} ready ({created})")


@app.command("ls")
@cli_errors
def ls(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document, for scripts.")
    ] = False,
    database_url: DbUrl = None,
    base_url: BaseUrl = None,
    api_key: AdminKey = None,
) -> None:
    """List the goldens every org sees on this host (orgs' own are theirs)."""
    from arker.server.goldens import is_internal

    if not base_url and not data_dir.is_dir():
        # Opening an engine makes its pool: listing should not create one.
        fail("not_found", f"no data directory at {data_dir} (pass --data-dir?)")
    url = _server_url(data_dir, base_url)
    rows: list[tuple[str, str | None, str]]
    if url is None:
        with engine_at(data_dir) as engine:
            found = engine.goldens()
        rows = [(g.name, g.description, _iso(g.created_at)) for g in found]
    else:
        with _api(url, data_dir, database_url, api_key) as arker:
            seen = arker.goldens()
        rows = [
            (g.name, g.description, g.created_at.isoformat(timespec="seconds"))
            for g in seen
            if g.scope != "org"
        ]
    rows = sorted(r for r in rows if not is_internal(r[0]))
    if as_json:
        print_json([{"name": n, "description": d, "created_at": c} for n, d, c in rows])
        return
    table = Table("name", "description", "created_at")
    for n, d, c in rows:
        table.add_row(n, d or "", c)
    out_console.print(table)


@app.command("rm")
@cli_errors
def rm(
    name: Annotated[str, typer.Argument(help="The golden to remove.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DbUrl = None,
    base_url: BaseUrl = None,
    api_key: AdminKey = None,
) -> None:
    """Remove a golden every org sees; VMs forked from it keep working."""
    from arker.server.goldens import is_internal

    url = _server_url(data_dir, base_url)
    if url is not None:
        with _api(url, data_dir, database_url, api_key) as arker:
            arker.delete_golden(name)
    else:
        if is_internal(name):
            fail("invalid_request", f"{name!r} is an org's golden: its org deletes it")
        with engine_at(data_dir) as engine:
            if name not in {g.name for g in engine.goldens()}:
                fail("not_found", f"golden {name!r} not found")
            engine.delete_golden(name)
    err_console.print(f"golden {name} removed")


def register(parent: typer.Typer) -> None:
    """Add `arker goldens ...` to the app."""
    parent.add_typer(app, name="goldens")
