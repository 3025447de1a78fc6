"""The relay into a VM's port as a WebSocket (the app's own WebSocket, by
path or preview host) and as raw TCP in binary WebSocket messages
(/v1/vms/{vm_id}/tcp/{port}). Who may ask is `port_access.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from fastapi import APIRouter, WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from arker.errors import ArkerError, ErrorCode
from arker.server.auth import Authenticator
from arker.server.port_access import (
    COOKIE,
    PREVIEW_PATH,
    TOKEN_PARAM,
    authorise,
    bad_gateway,
    check_port,
    forward_headers,
    preview_of,
    target_of,
)
from arker.server.service import Service

__all__ = ["relay_socket", "router"]

log = logging.getLogger("arker.server")

router = APIRouter()

READ_BYTES = 64 * 1024
WS_OPEN_TIMEOUT_S = 10.0


# -- WebSocket
@router.websocket("/v1/vms/{vm_id}/ports/{port}/{path:path}")
async def port_websocket(websocket: WebSocket, vm_id: str, port: str, path: str) -> None:
    await _relay_websocket(websocket, vm_id, port, path)


@router.websocket(PREVIEW_PATH + "/{path:path}")
async def preview_websocket(websocket: WebSocket, path: str) -> None:
    found = preview_of(websocket)
    if found is None:
        await _deny(websocket, ArkerError(ErrorCode.NOT_FOUND, "no such path: /_preview"))
        return
    await _relay_websocket(websocket, found[1], str(found[0]), path)


async def _deny(websocket: WebSocket, exc: ArkerError) -> None:
    """Refuse a WebSocket: accepted, then closed at once with 4000 + the HTTP
    status the same failure gets on the other routes, the error's message as
    the reason. (uvicorn's denial-response path logs an error for every
    refusal, and a browser sees no body of a refused upgrade anyway.)"""
    reason = exc.message.encode()[:120].decode(errors="ignore")  # a reason fits 123 bytes
    await websocket.accept()
    await websocket.close(4000 + exc.status if 400 <= exc.status <= 599 else 1011, reason)


async def _ws_socket(
    websocket: WebSocket, vm_id: str, port_text: str, tokens: bool
) -> socket.socket | None:
    """The VM connection for a WebSocket, or None once it is refused (closed
    with 4000 + the HTTP status the same failure gets elsewhere)."""
    svc: Service = websocket.app.state.service
    try:
        if not port_text.isdigit():
            raise ArkerError(ErrorCode.INVALID_REQUEST, "port: must be 1..65535", 422)
        port = check_port(int(port_text))
        if tokens:
            org, _, _ = await authorise(websocket, svc, vm_id, port)
        else:
            auth: Authenticator = websocket.app.state.auth
            org = await auth.org_for(websocket.headers.get("authorization"))
        return await svc.connect_port(org, vm_id, port)
    except ArkerError as exc:
        await _deny(websocket, exc)
        return None


async def _relay_websocket(websocket: WebSocket, vm_id: str, port_text: str, path: str) -> None:
    sock = await _ws_socket(websocket, vm_id, port_text, tokens=True)
    if sock is None:
        return
    by_key = websocket.query_params.get(TOKEN_PARAM) is None and COOKIE not in websocket.cookies
    headers = forward_headers(websocket, by_key, [])
    host = websocket.headers.get("host", "127.0.0.1")
    subprotocols = [
        p.strip() for v in websocket.headers.getlist("sec-websocket-protocol") for p in v.split(",")
    ]
    try:
        upstream = await connect(
            f"ws://{host}{target_of(websocket, path)}",
            sock=sock,
            additional_headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
            subprotocols=[p for p in subprotocols if p] or None,  # type: ignore[misc]
            open_timeout=WS_OPEN_TIMEOUT_S,
            max_size=None,
            compression=None,
            ping_interval=None,
        )
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        sock.close()
        await _deny(websocket, bad_gateway(f"the app in the vm refused the WebSocket: {exc}"))
        return
    svc: Service = websocket.app.state.service
    try:
        await websocket.accept(subprotocol=upstream.subprotocol)
        async with svc.hold(vm_id):  # an open relay keeps the VM from an idle stop
            await _pump_websocket(websocket, upstream)
    finally:
        await upstream.close()


async def _pump_websocket(websocket: WebSocket, upstream: ClientConnection) -> None:
    async def up() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            await upstream.send(text if text is not None else message.get("bytes") or b"")

    async def down() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                if isinstance(message, str):
                    await websocket.send_text(message)
                else:
                    await websocket.send_bytes(message)

    await _first_of(up(), down())
    with contextlib.suppress(Exception):  # the client may be gone already
        await websocket.close(upstream.close_code or 1000)


@router.websocket("/v1/vms/{vm_id}/tcp/{port}")
async def port_tcp(websocket: WebSocket, vm_id: str, port: str) -> None:
    sock = await _ws_socket(websocket, vm_id, port, tokens=False)
    if sock is None:
        return
    try:
        await websocket.accept()
    except BaseException:
        sock.close()
        raise
    svc: Service = websocket.app.state.service
    async with svc.hold(vm_id):
        await relay_socket(websocket, sock)


async def relay_socket(websocket: WebSocket, sock: socket.socket) -> None:
    """Bytes both ways between an accepted WebSocket (binary frames) and a
    connected socket, until either side ends; then both are closed (also
    the host agent's relay of `connect_port`, cluster/hostapp.py)."""
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:

        async def up() -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                writer.write(message.get("bytes") or (message.get("text") or "").encode())
                await writer.drain()

        async def down() -> None:
            while data := await reader.read(READ_BYTES):
                await websocket.send_bytes(data)

        await _first_of(up(), down())
        with contextlib.suppress(Exception):
            await websocket.close(1000)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _first_of(*jobs: Any) -> None:
    """Run both directions of a relay; when one ends (or fails), end the other."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    for task in done:
        exc = task.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed | OSError):
            log.warning("a relay into a vm ended with %r", exc)
