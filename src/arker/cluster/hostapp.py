"""The host side of the host API: the table of methods.py, served over an
engine, with nothing written per method (remote.py is the other side).

`host_routes(target, guard)` gives the routes; `guard(method, kwargs,
headers)` runs before each call and raises ArkerError to refuse it (the
host agent's token, lease and ownership checks, host.py).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from arker.cluster.codec import from_wire, to_wire
from arker.cluster.methods import Method
from arker.cluster.remote import ARGS_HEADER, COMMIT_RESULT, METHODS
from arker.errors import ArkerError, ErrorCode

__all__ = ["Guard", "host_routes"]

log = logging.getLogger("arker.host")

Guard = Callable[[str, dict[str, Any], Headers], Awaitable[None]]
# Engine calls block (wait_run waits up to 30 s): threads of their own.
THREADS = anyio.CapacityLimiter(256)


def _error(exc: ArkerError) -> JSONResponse:
    return JSONResponse(exc.to_wire(), status_code=exc.status)


def _kwargs(m: Method, args: Any) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise ArkerError(ErrorCode.INVALID_REQUEST, "args must be an object", 422)
    unknown = set(args) - set(m.params)
    if unknown:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{m.name}: unknown {sorted(unknown)}", 422)
    kwargs = {p: from_wire(v, m.params[p], f"{m.name}.{p}") for p, v in args.items()}
    for name, param in list(m.signature.parameters.items())[1:]:
        if name in m.params and name not in kwargs and param.default is param.empty:
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"{m.name}: {name} is required", 422)
    return kwargs


def _parse(text: str | None, m: Method) -> dict[str, Any]:
    try:
        return _kwargs(m, json.loads(text or "{}"))
    except ValueError as exc:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{m.name}: args are not JSON", 400) from exc


async def _call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: fn(**kwargs), limiter=THREADS)


def host_routes(target: Any, guard: Guard, spool_dir: str) -> list[Route | WebSocketRoute]:
    """The routes of every method in the table, calling them on `target`."""

    async def call(request: Request) -> Response:
        m = METHODS.get(request.path_params["name"])
        if m is None or m.kind == "local":
            return _error(ArkerError(ErrorCode.NOT_FOUND, "no such engine method here"))
        try:
            if m.body_streamed:
                kwargs = _parse(request.headers.get(ARGS_HEADER), m)
            else:
                try:
                    body = json.loads(await request.body() or b"{}")
                except ValueError as exc:
                    raise ArkerError(ErrorCode.INVALID_REQUEST, "the body is not JSON") from exc
                kwargs = _kwargs(m, body.get("args", {}) if isinstance(body, dict) else None)
            await guard(m.name, kwargs, request.headers)
            return await _answer(m, getattr(target, m.name), kwargs, request, spool_dir)
        except ArkerError as exc:
            return _error(exc)
        except Exception:
            log.exception("engine call %s failed", m.name)
            return _error(ArkerError(ErrorCode.INTERNAL, f"{m.name} failed on the host"))

    async def stream(websocket: WebSocket) -> None:
        m = METHODS.get(websocket.path_params["name"])
        await websocket.accept()
        try:
            if m is None or m.kind not in ("socket", "pty"):
                raise ArkerError(ErrorCode.NOT_FOUND, "no such streamed engine method")
            kwargs = _parse(websocket.query_params.get("args"), m)
            await guard(m.name, kwargs, websocket.headers)
            opened = await _call(getattr(target, m.name), **kwargs)
        except ArkerError as exc:
            await websocket.send_text(json.dumps({**exc.to_wire(), "status": exc.status}))
            await websocket.close(1000)
            return
        await websocket.send_text(json.dumps({"ok": True}))
        from arker.server.port_sockets import relay_socket
        from arker.server.pty import PtyRelay

        if m.kind == "socket":
            await relay_socket(websocket, opened)
            return
        try:
            await PtyRelay(websocket, opened).run()
        finally:
            await anyio.to_thread.run_sync(opened.close)

    return [
        Route("/engine/{name}", call, methods=["POST"]),
        WebSocketRoute("/engine/{name}", stream),
    ]


async def _answer(
    m: Method, fn: Callable[..., Any], kwargs: dict[str, Any], request: Request, spool_dir: str
) -> Response:
    if m.kind == "writer":
        writer = await _call(fn, **kwargs)
        try:
            async for chunk in request.stream():
                if chunk:
                    await _call(writer.write, data=chunk)
            info = await _call(writer.commit)
        except BaseException:
            await _call(writer.abort)
            raise
        return JSONResponse({"result": to_wire(info, COMMIT_RESULT)})
    if m.body is not None and not m.body_is_path:
        kwargs[m.body] = await request.body()
    if m.body is not None and m.body_is_path:
        fd, path = tempfile.mkstemp(dir=spool_dir, prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    await anyio.to_thread.run_sync(f.write, chunk)
            kwargs[m.body] = path
            result = await _call(fn, **kwargs)
        finally:
            os.unlink(path)
    else:
        result = await _call(fn, **kwargs)
    if m.kind == "bytes":
        return Response(result, media_type="application/octet-stream")
    if m.kind == "archive":
        return StreamingResponse(_drain(result), media_type="application/x-tar")
    if m.kind == "fds":
        for fd in result:
            os.close(fd)  # a caller elsewhere cannot watch them
        return JSONResponse({"result": []})
    return JSONResponse({"result": to_wire(result, m.result)})


async def _drain(reader: Any) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(reader.read):
            yield chunk
    finally:
        await anyio.to_thread.run_sync(reader.close)
