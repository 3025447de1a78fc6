"""`arker cluster up/down`: a real cluster on this one machine, for trying it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

cluster_app = typer.Typer(no_args_is_help=True, help="A local cluster on this machine.")


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@cluster_app.command("up")
def cluster_up(
    dir: Annotated[Path, typer.Option("--dir", help="Where everything of the cluster lives.")],
    hosts: Annotated[int, typer.Option("--hosts", min=1, help="Host agents to start.")] = 3,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="API replicas.")] = 2,
    port_base: Annotated[
        int, typer.Option("--port-base", help="First of the ports it uses (about 40).")
    ] = 8800,
) -> None:
    """Start PostgreSQL, SeaweedFS, host agents and API replicas behind one port;
    print {"api_url", "api_key", "hosts", "replicas"} as JSON."""
    from arker.cluster.up import up
    from arker.errors import ArkerError

    try:
        out = up(dir, hosts=hosts, replicas=replicas, port_base=port_base)
    except ArkerError as exc:
        _fail(exc)
    typer.echo(json.dumps(out))


@cluster_app.command("down")
def cluster_down(
    dir: Annotated[Path, typer.Option("--dir", help="The directory `up` was given.")],
) -> None:
    """Stop everything `arker cluster up` started there; nothing is left running or mounted."""
    from arker.cluster.up import down
    from arker.errors import ArkerError

    try:
        down(dir)
    except ArkerError as exc:
        _fail(exc)
