"""`arker mcp`: the tools over stdio, all on one SDK client configured from
the environment like every other command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import Context

from arker.client import AsyncArker
from arker.mcp.tools import build_server

__all__ = ["serve_stdio"]


async def serve_stdio(arker: AsyncArker) -> None:
    """Serve MCP on stdin/stdout until the host closes them; closes `arker`."""

    @asynccontextmanager
    async def clients(_: Context) -> AsyncIterator[AsyncArker]:
        yield arker

    try:
        await build_server(clients).run_stdio_async()
    finally:
        await arker.aclose()
