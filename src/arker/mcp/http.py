"""The tools over streamable HTTP, as an ASGI app to mount (at /mcp by
`arker serve`). Each call gets an SDK client of its own, made by `connect`
with the caller's API key (from the request's Authorization header) and the
base URL the mount puts in the X-Arker-Base-Url header; the tools then act
as that key's org, through the same API as any other client.

Stateless: every POST is its own MCP exchange (progress notifications ride
on its SSE answer), so any replica can take any request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from arker.client import AsyncArker
from arker.mcp.tools import build_server

__all__ = ["BASE_URL_HEADER", "McpHttp"]

BASE_URL_HEADER = "x-arker-base-url"

# (api key, base URL) -> a client, for one call
Connect = Callable[[str, str], AbstractAsyncContextManager[AsyncArker]]


def _bearer(value: str | None) -> str | None:
    scheme, _, key = (value or "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


class McpHttp:
    """An ASGI app serving MCP; run `run()` around its life (a lifespan)."""

    def __init__(self, connect: Connect | None = None) -> None:
        self.connect = connect  # may be set after: the app it calls is made later
        self.server = build_server(self._clients)
        # Bearer keys are required, which a DNS-rebinding page cannot send, and the
        # Host is the deployment's own: the SDK's localhost-only check does not fit.
        self.server.streamable_http_app(
            stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._manager = self.server.session_manager

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The session manager's life, in a task of its own: its task group is
        entered and left there, whatever tasks run the host app's lifespan."""
        stop = asyncio.Event()
        started = asyncio.Event()

        async def hold() -> None:
            async with self._manager.run():
                started.set()
                await stop.wait()

        task = asyncio.ensure_future(hold())
        try:
            waiting = asyncio.ensure_future(started.wait())
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if task.done():
                task.result()  # it failed to start: raise that
            yield
        finally:
            stop.set()
            await task

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._manager.handle_request(scope, receive, send)

    @asynccontextmanager
    async def _clients(self, ctx: Context) -> AsyncIterator[AsyncArker]:
        headers = ctx.headers or {}
        key = _bearer(headers.get("authorization"))
        base_url = headers.get(BASE_URL_HEADER)
        if key is None or not base_url or self.connect is None:
            raise ToolError("unauthorized: no API key (Authorization: Bearer <key>)")
        async with self.connect(key, base_url) as arker:
            yield arker
