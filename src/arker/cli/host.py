"""`arker host`: this machine's engine as a host agent of a cluster."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("host")(host)


def host(
    database_url: Annotated[
        str,
        typer.Option(
            "--database-url", envvar="ARKER_DATABASE_URL", help="The cluster's PostgreSQL."
        ),
    ],
    token_file: Annotated[
        str, typer.Option("--token-file", help="A file holding the host token replicas send.")
    ],
    advertise: Annotated[
        str, typer.Option("--advertise", help="The URL replicas reach this host at.")
    ],
    data_dir: Annotated[
        str, typer.Option("--data-dir", help="This host's pool and state.")
    ] = "/var/lib/arker",
    blob_url: Annotated[
        str | None,
        typer.Option(
            "--blob-url", envvar="ARKER_BLOB_URL", help="s3://bucket/prefix: goldens, checkpoints."
        ),
    ] = None,
    listen: Annotated[
        str, typer.Option("--listen", metavar="HOST:PORT", help="Where to serve the host API.")
    ] = "127.0.0.1:8750",
    lease_ttl_s: Annotated[
        float, typer.Option("--lease-ttl", help="Seconds a lease lasts unrenewed.", min=1.0)
    ] = 5.0,
    pool_reserve_mib: Annotated[
        int, typer.Option(help="Refuse forks and runs below this much free pool space (MiB).")
    ] = 2048,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve this machine's engine to the API replicas of a cluster."""
    import uvicorn

    from arker.cluster.host import build_host_app
    from arker.server.logs import setup_logging
    from arker.server.main import load_engine

    address, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise typer.BadParameter("must be HOST:PORT", param_hint="--listen")
    with open(token_file) as f:
        token = f.read().strip()
    if len(token) < 16:
        raise typer.BadParameter("the host token must be 16 characters or more")
    setup_logging(log_level)
    engine = load_engine(data_dir, pool_reserve_mib=pool_reserve_mib)
    app = build_host_app(
        database_url=database_url,
        token=token,
        data_dir=data_dir,
        advertise=advertise,
        engine=engine,
        blob_url=blob_url,
        ttl_s=lease_ttl_s,
    )
    uvicorn.run(
        app,
        host=address.strip("[]") or "127.0.0.1",
        port=int(port),
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
