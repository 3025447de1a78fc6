"""The `arker` command line."""

from __future__ import annotations

import typer

from arker.cli import client, cluster, demo, files, goldens, host, mcp, ports, server, shell, smoke

__all__ = ["app", "main"]

app = typer.Typer(name="arker", no_args_is_help=True, help="Fork Linux VMs, run commands.")
client.register(app)
files.register(app)
ports.register(app)
shell.register(app)
server.register(app)
host.register(app)
cluster.register(app)
goldens.register(app)
smoke.register(app)
demo.register(app)
mcp.register(app)


def main() -> None:
    app()
