"""The relay into a VM's port: HTTP (streamed both ways, over h11), by path
(/v1/vms/{vm_id}/ports/{port}/{path}) or by preview host ({port}-{vm_id}.<preview
domain>, which the edge maps to /_preview/{path}); WebSocket and raw TCP are in
`port_sockets.py`, who may ask in `port_access.py`.

A thin edge, like the routes: who may reach which VM, and starting it, are
the service's; the engine makes the connection inside the VM's network
namespace. This module only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import h11
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from arker import _types as t
from arker.errors import ArkerError, ErrorCode
from arker.server import port_sockets
from arker.server.port_access import (
    COOKIE,
    HOP_BY_HOP,
    PREVIEW_PATH,
    TOKEN_PARAM,
    authorise,
    bad_gateway,
    check_port,
    forward_headers,
    preview_of,
    target_of,
    token_cookie,
)
from arker.server.routes import Org, Svc, VmId
from arker.server.service import Service

__all__ = ["router"]

router = APIRouter()
router.include_router(port_sockets.router)

Port = Annotated[int, Path(ge=1, le=65535)]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
READ_BYTES = 64 * 1024


# -- HTTP
@router.post("/v1/vms/{vm_id}/ports/{port}/token")
async def port_token(
    vm_id: VmId,
    port: Port,
    request: Request,
    org: Org,
    svc: Svc,
    body: t.PortTokenRequest | None = None,
) -> Response:
    ttl_s = (body.ttl_s if body is not None else None) or 3600
    token, expires_at = await svc.port_token(org, vm_id, port, ttl_s)
    domain = svc.settings.preview_domain
    scheme = request.url.scheme
    if domain:
        base = f"{scheme}://{port}-{vm_id.lower()}.{domain.strip('.')}/"
    else:
        host = request.headers.get("host", "127.0.0.1")
        prefix = request.scope.get("state", {}).get("api_prefix", "")
        base = f"{scheme}://{host}{prefix}/v1/vms/{quote(vm_id, safe='')}/ports/{port}/"
    from arker.server.wire import ts

    answer = t.PortToken(url=f"{base}?{TOKEN_PARAM}={token}", expires_at=ts(expires_at))
    return Response(answer.model_dump_json(), media_type="application/json")


@router.api_route("/v1/vms/{vm_id}/ports/{port}/{path:path}", methods=METHODS)
async def port_http(vm_id: VmId, port: Port, path: str, request: Request, svc: Svc) -> Response:
    return await _relay_http(request, svc, vm_id, port, path)


@router.api_route(PREVIEW_PATH + "/{path:path}", methods=METHODS, include_in_schema=False)
async def preview_http(path: str, request: Request, svc: Svc) -> Response:
    found = preview_of(request)
    if found is None:  # only the edge sends requests here, for a preview host
        raise ArkerError(ErrorCode.NOT_FOUND, f"no such path: {request.url.path}")
    port, vm_id = found
    return await _relay_http(request, svc, vm_id, check_port(port), path)


async def _relay_http(request: Request, svc: Service, vm_id: str, port: int, path: str) -> Response:
    org, token, expires_at = await authorise(request, svc, vm_id, port)
    by_key = token is None and request.cookies.get(COOKIE) is None
    sock = await svc.connect_port(org, vm_id, port)
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    extra = [(b"connection", b"close")]
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if length is not None:
        extra.append((b"content-length", length.encode()))
    elif chunked:
        extra.append((b"transfer-encoding", b"chunked"))
    host = request.headers.get("host", f"127.0.0.1:{port}")
    headers = [(b"host", host.encode()), *forward_headers(request, by_key, extra)]
    relay = _HttpRelay(reader, writer)
    try:
        head = await relay.start(
            request, target_of(request, path), headers, length is not None or chunked
        )
    except BaseException:
        await relay.close()
        raise
    out = [(n, v) for n, v in head.headers if n not in HOP_BY_HOP or n == b"content-length"]
    out.append((b"x-arker-relayed", b"1"))
    if token is not None:
        out.append((b"set-cookie", token_cookie(request, token, expires_at, vm_id, port)))
    return _Relayed(head.status_code, out, relay)


class _HttpRelay:
    """One request and its answer over one connection into the VM."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)
        self.pump: asyncio.Task[None] | None = None

    async def start(
        self, request: Request, target: str, headers: list[tuple[bytes, bytes]], has_body: bool
    ) -> h11.Response:
        """Send the head, stream the body in a task, and return the answer's head."""
        self.writer.write(
            self.conn.send(h11.Request(method=request.method, target=target, headers=headers))
        )
        self.pump = asyncio.create_task(self._send_body(request.stream() if has_body else None))
        event = await self._next()
        while isinstance(event, h11.InformationalResponse):  # 100 Continue and the like
            event = await self._next()
        if not isinstance(event, h11.Response):
            raise bad_gateway("the app closed the connection before it answered")
        return event

    async def _send_body(self, body: AsyncIterator[bytes] | None) -> None:
        try:
            if body is not None:
                async for chunk in body:
                    if chunk:
                        self.writer.write(self.conn.send(h11.Data(data=chunk)))
                        await self.writer.drain()
            self.writer.write(self.conn.send(h11.EndOfMessage()))
            await self.writer.drain()
        except BaseException:
            self.writer.close()  # wakes a read that waits for an answer that cannot come
            raise

    async def _next(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._raise_pump_error()
                raise bad_gateway(f"the app's answer is not HTTP/1.1: {exc}") from exc
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    self._raise_pump_error()
                return event
            try:
                data = await self.reader.read(READ_BYTES)
            except OSError:
                data = b""
            self.conn.receive_data(data)

    def _raise_pump_error(self) -> None:
        if self.pump is not None and self.pump.done() and not self.pump.cancelled():
            exc = self.pump.exception()
            if exc is not None:
                raise exc

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise bad_gateway("the app closed the connection in the middle of its answer")

    @property
    def body_sent(self) -> bool:
        return self.pump is None or self.pump.done()

    async def close(self) -> None:
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()
            with contextlib.suppress(BaseException):
                await self.pump
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class _Relayed(Response):
    """The app's answer, streamed as it comes. A client that goes away ends
    the relay (and its connection into the VM) at once."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], relay: _HttpRelay) -> None:
        super().__init__(status_code=status)
        self.raw_headers = headers
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.create_task(self._stream(send))
        watching: asyncio.Task[None] | None = None
        try:
            while not streaming.done():
                if watching is None and self._relay.body_sent:
                    # Only once the request body is all read: before, its
                    # messages are the pump's, and a second reader would steal them.
                    watching = asyncio.create_task(_disconnected(receive))
                waits: set[asyncio.Future[Any]] = {streaming}
                if watching is not None:
                    waits.add(watching)
                elif self._relay.pump is not None:
                    waits.add(self._relay.pump)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if watching is not None and watching.done():
                    streaming.cancel()
                    break
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await streaming
        finally:
            for task in (streaming, watching):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            await self._relay.close()

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self._relay.body():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
