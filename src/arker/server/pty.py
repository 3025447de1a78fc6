"""The terminal: GET /v1/vms/{vm_id}/pty, a WebSocket onto a pty in a VM.

Binary frames are the terminal's bytes both ways; text frames are JSON
control messages (PtyStarted, PtyResize, PtyExit, PtyRefused in the
contract). A thin edge, like ports.py: who may open which VM's terminal,
and starting the VM, are the service's; the engine makes the terminal. This
module moves bytes between the WebSocket and the pty's master on the event
loop (add_reader/add_writer on the master, no thread per terminal), and
reads the master only once the previous frame is handed to the socket, so a
slow client slows the terminal instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from arker import _types as t
from arker.engine.pty import MAX_SIZE, Pty
from arker.errors import ArkerError, ErrorCode
from arker.server.auth import Authenticator
from arker.server.service import Service

__all__ = ["PtyRelay", "router"]

router = APIRouter()

READ_BYTES = 64 * 1024
# What of the output left in the pty is sent after the shell has exited: a
# background process may keep writing for as long as it lives.
DRAIN_MAX_BYTES = 1024 * 1024


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user: Literal["user", "root"] = "user"
    cols: Annotated[int, Field(ge=1, le=MAX_SIZE)] = 80
    rows: Annotated[int, Field(ge=1, le=MAX_SIZE)] = 24
    command: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    term: Annotated[str, Field(pattern=r"^[A-Za-z0-9._+-]{1,64}$")] = "xterm-256color"


def _query(websocket: WebSocket) -> _Query:
    """The query as the contract says it, or invalid_request (422) with the
    details the other routes give."""
    try:
        return _Query.model_validate(dict(websocket.query_params))
    except ValidationError as exc:
        errors = [
            {"loc": ["query", *(str(p) for p in e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        where = ".".join(errors[0]["loc"])
        raise ArkerError(
            ErrorCode.INVALID_REQUEST, f"{where}: {errors[0]['msg']}", 422, {"errors": errors}
        ) from exc


def _activity(svc: Service, vm_id: str) -> contextlib.AbstractAsyncContextManager[None]:
    return svc.hold(vm_id)  # an open terminal keeps its VM from being stopped as idle


@router.websocket("/v1/vms/{vm_id}/pty")
async def pty_websocket(websocket: WebSocket, vm_id: str) -> None:
    svc: Service = websocket.app.state.service
    try:
        auth: Authenticator = websocket.app.state.auth
        org = await auth.org_for(websocket.headers.get("authorization"))
        websocket.state.org = org  # for the access log
        q = _query(websocket)
        pty = await svc.open_pty(
            org, vm_id, user=q.user, cols=q.cols, rows=q.rows, command=q.command, term=q.term
        )
    except ArkerError as exc:
        await _refuse(websocket, exc)
        return
    try:
        async with _activity(svc, vm_id):
            await websocket.accept()
            await websocket.send_text(t.PtyStarted(type="started").model_dump_json())
            await PtyRelay(websocket, pty).run()
    finally:
        # In a thread: the kill waits (briefly) for the tree to be gone.
        await anyio.to_thread.run_sync(pty.close)


async def _refuse(websocket: WebSocket, exc: ArkerError) -> None:
    """Accept, send the error in the contract's shape, close with 4000 + its
    HTTP status (as ports.py refuses, and for the same reason: uvicorn logs an
    error for every denial response)."""
    body = t.ErrorBody(code=str(exc.code), message=exc.message, details=exc.details)
    reason = exc.message.encode()[:120].decode(errors="ignore")  # a reason fits 123 bytes
    await websocket.accept()
    await websocket.send_text(
        t.PtyRefused(type="error", error=body).model_dump_json(exclude_none=True)
    )
    await websocket.close(4000 + exc.status if 400 <= exc.status <= 599 else 1011, reason)


class PtyRelay:
    """One terminal's bytes and control messages, until its command exits
    (then PtyExit and a normal close) or the client goes away."""

    def __init__(self, websocket: WebSocket, pty: Pty) -> None:
        self.websocket = websocket
        self.pty = pty
        self.loop = asyncio.get_running_loop()

    async def run(self) -> None:
        output = asyncio.create_task(self._output())
        typed = asyncio.create_task(self._input())
        exited = asyncio.create_task(self._ready(self.pty.exit_fileno()))
        tasks = (output, typed, exited)
        try:
            await asyncio.wait((typed, exited), return_when=asyncio.FIRST_COMPLETED)
            if exited.done() and not typed.done():
                output.cancel()
                with contextlib.suppress(BaseException):
                    await output
                with contextlib.suppress(WebSocketDisconnect):  # the client left meanwhile
                    await self._finish()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _finish(self) -> None:
        """The command has exited: what it left in the pty, then its status."""
        exit_code = self.pty.wait(0)  # its socket is readable: no wait
        sent = 0
        while sent < DRAIN_MAX_BYTES:
            try:
                data = self.pty.read(READ_BYTES, timeout_s=0)
            except TimeoutError:
                break
            if not data:
                break
            sent += len(data)
            await self.websocket.send_bytes(data)
        await self.websocket.send_text(
            t.PtyExit(type="exit", exit_code=exit_code).model_dump_json()
        )
        await self.websocket.close(1000)

    async def _output(self) -> None:
        while True:
            await self._ready(self.pty.fileno())
            try:
                data = self.pty.read(READ_BYTES, timeout_s=0)
            except TimeoutError:
                continue
            if not data:
                return  # nothing in the VM holds the terminal; the exit follows
            await self.websocket.send_bytes(data)  # waits while the socket is full

    async def _input(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                await self._write(data)
                continue
            try:
                resize = t.PtyResize.model_validate_json(message.get("text") or "")
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "message"
                await _refuse_late(self.websocket, f"bad control message: {where}: {first['msg']}")
                return
            self.pty.resize(resize.cols, resize.rows)

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.pty.write(view) :]
            except BlockingIOError:
                await self._ready(self.pty.fileno(), write=True)

    async def _ready(self, fd: int, write: bool = False) -> None:
        """Until `fd` is readable (or writable)."""
        ready: asyncio.Future[Any] = self.loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if write:
            self.loop.add_writer(fd, wake)
        else:
            self.loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            if write:
                self.loop.remove_writer(fd)
            else:
                self.loop.remove_reader(fd)


async def _refuse_late(websocket: WebSocket, message: str) -> None:
    """A client that breaks the wire mid-session: its terminal ends."""
    await websocket.close(4422, message.encode()[:120].decode(errors="ignore"))
