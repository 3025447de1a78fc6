"""Arker as a Model Context Protocol server, over the SDK only (never over
server internals), so it works against any deployment.

    arker mcp                  stdio, for an agent host that launches it
                               (ARKER_API_KEY, ARKER_BASE_URL or ARKER_REGION)
    arker serve  ->  /mcp      streamable HTTP, with the caller's API key

`tools.build_server` holds the tools; `stdio` and `http` only say where each
call's SDK client comes from. Needs the `mcp` extra (`pip install arker[mcp]`).
"""

from __future__ import annotations

from arker.mcp.tools import MAX_OUTPUT_CHARS, Clients, build_server

__all__ = ["MAX_OUTPUT_CHARS", "Clients", "build_server"]
