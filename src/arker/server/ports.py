"""The relay into a VM's port: HTTP (streamed both ways, over h11) and
WebSocket, by path (/v1/vms/{vm_id}/ports/{port}/{path}) or by preview host
({port}-{vm_id}.<preview domain>, which the edge maps to /_preview/{path}),
and raw TCP as binary WebSocket messages (/v1/vms/{vm_id}/tcp/{port}).

A thin edge, like the routes: who may reach which VM, and starting it, are
the service's; the engine makes the connection inside the VM's network
namespace. This module only authenticates and moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import h11
from fastapi import APIRouter, Path, Request, WebSocket
from fastapi.responses import Response
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from arker import _types as t
from arker.errors import ArkerError, ErrorCode
from arker.server.auth import KEY_PREFIX, Authenticator
from arker.server.routes import Org, Svc, VmId
from arker.server.service import Service

__all__ = ["PREVIEW_PATH", "preview_target", "relay_socket", "router"]

log = logging.getLogger("arker.server")

router = APIRouter()

Port = Annotated[int, Path(ge=1, le=65535)]
PREVIEW_PATH = "/_preview"
TOKEN_PARAM = "arker_token"
COOKIE = "arker_port_token"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
READ_BYTES = 64 * 1024
WS_OPEN_TIMEOUT_S = 10.0
# Not passed on (RFC 9110 7.6.1), with what the relay sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_LABEL = re.compile(r"([0-9]{1,5})-([0-9a-z]+(?:_[0-9a-z-]+)?)")


# -- preview hosts
def preview_target(host: str, domain: str, burst_suffix: str | None) -> tuple[int, str] | None:
    """(port, vm_id) for a Host of `{port}-{vm_id}.{domain}`, else None.
    Browsers lower-case host names and VM ids are upper-case ULIDs: the id is
    mapped back (and a burst suffix to its configured spelling)."""
    name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
    name, suffix = name.lower().rstrip("."), "." + domain.lower().strip(".")
    if not name.endswith(suffix):
        return None
    found = _LABEL.fullmatch(name[: -len(suffix)])
    if found is None:
        return None
    ulid, _, rest = found.group(2).partition("_")
    vm_id = ulid.upper()
    if rest:
        vm_id += "_" + (burst_suffix if burst_suffix and burst_suffix.lower() == rest else rest)
    return int(found.group(1)), vm_id


def _preview(conn: HTTPConnection) -> tuple[int, str] | None:
    found: tuple[int, str] | None = conn.scope.get("state", {}).get("preview")
    return found


# -- who is asking
async def _authorise(
    conn: HTTPConnection, svc: Service, vm_id: str, port: int
) -> tuple[str, str | None, float]:
    """(org, a token to set as the cookie or None, its expiry). A token in
    the query wins, then the cookie a token set, then the API key."""
    token = conn.query_params.get(TOKEN_PARAM)
    if token is not None:
        org, expires_at = svc.port_token_org(token, vm_id, port)
        return org, token, expires_at
    cookie = conn.cookies.get(COOKIE)
    if cookie is not None:
        org, _ = svc.port_token_org(cookie, vm_id, port)
        return org, None, 0.0
    auth: Authenticator = conn.app.state.auth
    org = await auth.org_for(conn.headers.get("authorization"))
    conn.state.org = org
    return org, None, 0.0


def _check_port(port: int) -> int:
    # The routes' Path(ge=1, le=65535) says the same for the /ports/ paths; a
    # preview host's port is parsed from its name.
    if not 1 <= port <= 65535:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"port: must be 1..65535, not {port}", 422)
    return port


def _forward_headers(
    conn: HTTPConnection, by_key: bool, extra: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The request's headers for the VM's app: hop-by-hop ones, the API key
    and the port token's cookie removed; X-Forwarded-* added."""
    named = {
        part.strip().lower().encode()
        for value in conn.headers.getlist("connection")
        for part in value.split(",")
    }
    out: list[tuple[bytes, bytes]] = []
    for name, value in conn.scope["headers"]:
        if name in HOP_BY_HOP or name in named or name.startswith(b"sec-websocket-"):
            continue
        if name == b"authorization" and (by_key or KEY_PREFIX.encode() in value):
            continue  # the API key never reaches the VM
        if name == b"cookie":
            kept = [
                c
                for c in value.split(b";")
                if c.strip().partition(b"=")[0] != COOKIE.encode() and c.strip()
            ]
            if not kept:
                continue
            value = b";".join(kept).strip()
        if name.startswith(b"x-forwarded-") and name != b"x-forwarded-for":
            continue
        out.append((name, value))
    client = conn.client.host if conn.client else ""
    earlier = conn.headers.get("x-forwarded-for")
    host = conn.headers.get("host", "")
    out = [(n, v) for n, v in out if n != b"x-forwarded-for"]
    out += [
        (b"x-forwarded-for", (f"{earlier}, {client}" if earlier else client).encode()),
        (b"x-forwarded-host", host.encode()),
        (b"x-forwarded-proto", b"https" if conn.url.scheme in ("https", "wss") else b"http"),
        *extra,
    ]
    return out


def _target(conn: HTTPConnection, path: str) -> str:
    """The app's path and query, the token parameter removed."""
    query = b"&".join(
        part
        for part in conn.scope.get("query_string", b"").split(b"&")
        if part and part.partition(b"=")[0] != TOKEN_PARAM.encode()
    )
    target = quote("/" + path.lstrip("/"), safe="/:@!$&'()*+,;=-._~%")
    return target + ("?" + query.decode("latin-1") if query else "")


def _cookie(conn: HTTPConnection, token: str, expires_at: float, vm_id: str, port: int) -> bytes:
    """Set-Cookie for the token: the preview host's whole site, or this port's
    path under the API; HttpOnly so the app's scripts cannot read it."""
    if _preview(conn) is not None:
        path = "/"
    else:
        prefix = conn.scope.get("state", {}).get("api_prefix", "")
        path = f"{prefix}/v1/vms/{quote(vm_id, safe='')}/ports/{port}/"
    max_age = max(0, int(expires_at - time.time()))
    secure = "; Secure" if conn.url.scheme == "https" else ""
    return (
        f"{COOKIE}={token}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ).encode()


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
    found = _preview(request)
    if found is None:  # only the edge sends requests here, for a preview host
        raise ArkerError(ErrorCode.NOT_FOUND, f"no such path: {request.url.path}")
    port, vm_id = found
    return await _relay_http(request, svc, vm_id, _check_port(port), path)


async def _relay_http(request: Request, svc: Service, vm_id: str, port: int, path: str) -> Response:
    org, token, expires_at = await _authorise(request, svc, vm_id, port)
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
    headers = [(b"host", host.encode()), *_forward_headers(request, by_key, extra)]
    relay = _HttpRelay(reader, writer)
    try:
        head = await relay.start(
            request, _target(request, path), headers, length is not None or chunked
        )
    except BaseException:
        await relay.close()
        raise
    out = [(n, v) for n, v in head.headers if n not in HOP_BY_HOP or n == b"content-length"]
    out.append((b"x-arker-relayed", b"1"))
    if token is not None:
        out.append((b"set-cookie", _cookie(request, token, expires_at, vm_id, port)))
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
            raise _bad_gateway("the app closed the connection before it answered")
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
                raise _bad_gateway(f"the app's answer is not HTTP/1.1: {exc}") from exc
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
                raise _bad_gateway("the app closed the connection in the middle of its answer")

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


def _bad_gateway(message: str) -> ArkerError:
    return ArkerError(ErrorCode.UNAVAILABLE, message, 502)


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


# -- WebSocket
@router.websocket("/v1/vms/{vm_id}/ports/{port}/{path:path}")
async def port_websocket(websocket: WebSocket, vm_id: str, port: str, path: str) -> None:
    await _relay_websocket(websocket, vm_id, port, path)


@router.websocket(PREVIEW_PATH + "/{path:path}")
async def preview_websocket(websocket: WebSocket, path: str) -> None:
    found = _preview(websocket)
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
        port = _check_port(int(port_text))
        if tokens:
            org, _, _ = await _authorise(websocket, svc, vm_id, port)
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
    headers = _forward_headers(websocket, by_key, [])
    host = websocket.headers.get("host", "127.0.0.1")
    subprotocols = [
        p.strip() for v in websocket.headers.getlist("sec-websocket-protocol") for p in v.split(",")
    ]
    try:
        upstream = await connect(
            f"ws://{host}{_target(websocket, path)}",
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
        await _deny(websocket, _bad_gateway(f"the app in the vm refused the WebSocket: {exc}"))
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
