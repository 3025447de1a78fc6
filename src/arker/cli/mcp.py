"""`arker mcp`: the MCP server over stdio, for an agent host to launch."""

from __future__ import annotations

from typing import Annotated

import typer

from arker.cli._output import cli_errors, fail

__all__ = ["register"]


def mcp(
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="API key (else ARKER_API_KEY, AUTH_KEY)")
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="Else ARKER_REGION")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="Else ARKER_BASE_URL")] = None,
) -> None:
    """Serve the Model Context Protocol on stdin/stdout (tools: vm_fork, run,
    fs_read, fs_edit, ...), acting with this API key. stdout is the protocol:
    nothing else is printed there."""
    try:
        from arker.mcp.stdio import serve_stdio
    except ImportError:
        fail("unsupported_operation", "the MCP server needs the mcp extra: pip install arker[mcp]")
    import anyio

    from arker import AsyncArker

    # A run may take an hour; each request is bounded by its own timeout_s.
    arker = AsyncArker(api_key, region=region, base_url=base_url, timeout_s=3600)
    anyio.run(serve_stdio, arker)


def register(app: typer.Typer) -> None:
    app.command()(cli_errors(mcp))
