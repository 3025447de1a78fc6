"""`arker open VM PORT` (a browser URL for a VM's port) and `arker forward VM
PORT` (a local port relayed into the VM's, like `kubectl port-forward`).

A forwarded connection is one WebSocket to the API's raw TCP relay
(/v1/vms/{vm_id}/tcp/{port}), its bytes carried as binary messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import typer

from arker.cli._connect import ApiKey, BaseUrl, Region, VmId, connect
from arker.cli._output import cli_errors, err_console, fail

__all__ = ["register"]

PortArg = Annotated[
    int, typer.Argument(metavar="PORT", help="The TCP port inside the VM.", min=1, max=65535)
]
READ_BYTES = 64 * 1024
# A refused relay is closed as soon as it opens; an open one stays silent.
REFUSAL_WAIT_S = 0.5
_CODES = {401: "unauthorized", 404: "not_found", 410: "vm_lost", 422: "invalid_request"}


def open_port(
    vm: VmId,
    port: PortArg,
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Seconds the URL works (server default: 1 h).")
    ] = None,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Print a URL that opens a VM's port in a browser, no API key needed."""
    with connect(api_key, region, base_url) as arker:
        token = arker.vm(vm).port_token(port, ttl_s=ttl)
    print(token.url)
    err_console.print(f"arker: works until {token.expires_at.isoformat()}")


def forward(
    vm: VmId,
    port: PortArg,
    local: Annotated[
        int, typer.Option("--local", help="The local port (0: any free one).", min=0, max=65535)
    ] = 8080,
    address: Annotated[str, typer.Option("--address", help="The local address.")] = "127.0.0.1",
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Relay each connection to ADDRESS:LOCAL into PORT of the VM, until Ctrl-C."""
    with connect(api_key, region, base_url) as arker:
        url, headers = arker.vm(vm)._tcp_target(port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_forward(url, headers, address, local, f"{vm}:{port}"))


async def _forward(url: str, headers: dict[str, str], address: str, local: int, what: str) -> None:
    await _check_reachable(url, headers)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _relay(url, headers, reader, writer)
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(one, address, local)
    except OSError as exc:
        fail("unavailable", f"cannot listen on {address}:{local}: {exc.strerror or exc}")
    host, bound = server.sockets[0].getsockname()[:2]
    # The one line a script reads: where to connect.
    print(f"forwarding {host}:{bound} -> {what}", flush=True)
    async with server:
        await server.serve_forever()


async def _check_reachable(url: str, headers: dict[str, str]) -> None:
    """Open one relay before listening, so that a wrong VM, key or port fails
    now with the server's message rather than on the first connection."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    try:
        async with connect(url, additional_headers=headers, max_size=None) as ws:
            # A refusal is a close at once: 4000 + the HTTP status, the message as reason.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.recv(), REFUSAL_WAIT_S)
    except ConnectionClosed as exc:
        if exc.rcvd is not None and 4400 <= exc.rcvd.code <= 4599:
            code = _CODES.get(exc.rcvd.code - 4000, "unavailable")
            fail(code, exc.rcvd.reason)
    except InvalidStatus as exc:
        fail("unavailable", f"the server refused the relay: HTTP {exc.response.status_code}")
    except OSError as exc:
        fail("connection_error", f"cannot reach {url}: {exc.strerror or exc}")


async def _relay(
    url: str, headers: dict[str, str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    try:
        ws = await connect(url, additional_headers=headers, max_size=None, compression=None)
    except (InvalidStatus, OSError) as exc:
        err_console.print(f"arker: a connection was not relayed: {exc}")
        return
    async with ws:

        async def up() -> None:
            while data := await reader.read(READ_BYTES):
                await ws.send(data)

        async def down() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    writer.write(message if isinstance(message, bytes) else message.encode())
                    await writer.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task


def register(app: typer.Typer) -> None:
    """Add `open` and `forward` to the `arker` app."""
    app.command("open")(cli_errors(open_port))
    app.command("forward")(cli_errors(forward))
