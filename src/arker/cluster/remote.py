"""`RemoteEngine`: an `Engine` whose every method is a call to a host agent.

Nothing here is written per method: the class is built from the table of
methods.py (every public method of `Engine` and `HostExtras`), each method
binding its arguments against the interface's signature and crossing by
the kind its types give. The host side of the same table is hostapp.py.

    POST /engine/{method}   JSON {"args": {...}} -> {"result": ...}; or the
                            arguments in the X-Arker-Args header and a body
    WS   /engine/{method}   ?args=JSON, for sockets and terminals

A failure is the contract's error shape with the host's status; a host
that cannot be reached is `HostUnreachable` (unavailable, 503).
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any, cast

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from arker.cluster.codec import from_wire, hints_of, to_wire
from arker.cluster.hostapi import HostExtras
from arker.cluster.methods import Method, method_table
from arker.engine.base import ArchiveReader, Engine, FileInfo, FileWriter
from arker.engine.pty import Pty, check_size
from arker.errors import ArkerError, ErrorCode

__all__ = ["ARGS_HEADER", "METHODS", "HostUnreachable", "RemoteEngine", "connect"]

ARGS_HEADER = "x-arker-args"
FENCE_HEADER = "x-arker-fence"
METHODS = method_table(Engine, HostExtras)
CHUNK = 256 * 1024
# A call may wait (wait_run waits up to its timeout, 30 s from the service);
# a host that answers nothing for this long is gone.
READ_TIMEOUT_S = 120.0
COMMIT_RESULT = hints_of(FileWriter.commit)["return"]


class HostUnreachable(ArkerError):
    """No answer from the host: refused, reset, or timed out."""

    def __init__(self, url: str, exc: BaseException) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, f"host {url} unreachable: {exc}", 503)


def error_from(status: int, body: bytes) -> ArkerError:
    try:
        err = json.loads(body)["error"]
        return ArkerError(err["code"], err["message"], status, err.get("details"))
    except (ValueError, KeyError, TypeError):
        return ArkerError(ErrorCode.INTERNAL, f"host answered {status}: {body[:200]!r}", status)


class _Transport:
    """One host: an HTTP client (kept, so calls reuse connections) and its token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.fence: int | None = None  # sent with every call when set (see leases.py)
        self.http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(10.0, read=READ_TIMEOUT_S),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def headers(self, args: dict[str, Any] | None = None) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.token}"}
        if self.fence is not None:
            headers[FENCE_HEADER] = str(self.fence)
        if args is not None:
            headers[ARGS_HEADER] = json.dumps(args)
        return headers

    def send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            response = self.http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise HostUnreachable(self.url, exc) from exc
        if response.status_code != 200:
            body = response.read()
            response.close()
            raise error_from(response.status_code, body)
        return response

    def ws(self, method: str, args: dict[str, Any]) -> ClientConnection:
        base = "ws" + self.url.removeprefix("http")
        query = httpx.QueryParams({"args": json.dumps(args)})
        try:
            conn = ws_connect(
                f"{base}/engine/{method}?{query}",
                additional_headers=self.headers(),
                open_timeout=10,
                max_size=None,
                legacy=True,  # closed by its owner (the relay threads), not a with block
            )
        except (OSError, TimeoutError) as exc:
            raise HostUnreachable(self.url, exc) from exc
        except Exception as exc:  # the handshake refused: an HTTP error answer
            raise HostUnreachable(self.url, exc) from exc
        try:
            first = json.loads(conn.recv(timeout=60))
        except (ConnectionClosed, TimeoutError, ValueError) as exc:
            conn.close()
            raise HostUnreachable(self.url, exc) from exc
        if "error" in first:
            conn.close()
            raise error_from(int(first.get("status", 500)), json.dumps(first).encode())
        return conn


class RemoteEngineBase(Engine):
    """The transport; the methods come from the table (see `_build`)."""

    kind = "remote"
    supports_checkpoints = True

    def __init__(self, url: str, token: str) -> None:
        self.transport = _Transport(url, token)

    @property
    def url(self) -> str:
        return self.transport.url

    def open(self) -> None:
        return None

    def close(self) -> None:
        self.transport.http.close()

    def _call(self, m: Method, arguments: dict[str, Any]) -> Any:
        args = {p: to_wire(arguments[p], m.params[p]) for p in m.params if p in arguments}
        t = self.transport
        if m.kind == "fds":
            return ()  # nothing to watch from here: callers poll read_output
        if m.kind == "local":
            raise ArkerError(
                ErrorCode.UNSUPPORTED_OPERATION,
                f"{m.name} takes a file object of this process: the host makes it itself",
            )
        if m.kind in ("socket", "pty"):
            conn = t.ws(m.name, args)
            return _socket_over(conn) if m.kind == "socket" else _RemotePty(conn)
        if m.kind == "writer":
            return _SpoolWriter(t, m.name, args)
        if m.body is not None:
            content = _file_chunks(arguments[m.body]) if m.body_is_path else arguments[m.body]
            request = t.http.build_request(
                "POST", f"/engine/{m.name}", headers=t.headers(args), content=content
            )
        else:
            request = t.http.build_request(
                "POST", f"/engine/{m.name}", headers=t.headers(), json={"args": args}
            )
        response = t.send(request, stream=m.kind == "archive")
        if m.kind == "archive":
            return _StreamReader(response)
        if m.kind == "bytes":
            return response.content
        return from_wire(response.json()["result"], m.result, f"{m.name} result")


def _client_method(m: Method) -> Any:
    def call(self: RemoteEngineBase, *args: Any, **kwargs: Any) -> Any:
        bound = m.signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        return self._call(m, dict(bound.arguments))

    call.__name__ = call.__qualname__ = m.name
    call.__signature__ = m.signature  # type: ignore[attr-defined]
    return call


def _build() -> type[RemoteEngineBase]:
    namespace = {name: _client_method(m) for name, m in METHODS.items()}
    cls = type("RemoteEngine", (RemoteEngineBase,), namespace)
    cls.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]
    return cast(type[RemoteEngineBase], cls)


RemoteEngine = _build()


def connect(url: str, token: str) -> RemoteEngineBase:
    """The engine of the host agent at `url`, called with its host token."""
    return RemoteEngine(url, token)


# -- transport adapters, by kind


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class _StreamReader(ArchiveReader):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = response.iter_raw(CHUNK)

    def read(self) -> bytes:
        try:
            return next(self._chunks, b"")
        except httpx.TransportError as exc:
            raise ArkerError(ErrorCode.UNAVAILABLE, f"the host's stream broke: {exc}") from exc

    def close(self) -> None:
        self._response.close()


class _SpoolWriter(FileWriter):
    """The pieces go to a temporary file here; commit streams them to the host,
    which writes them with the engine's own writer (its rules, its atomicity)."""

    def __init__(self, transport: _Transport, method: str, args: dict[str, Any]) -> None:
        self._t, self._method, self._args = transport, method, args
        self._max = args.get("max_bytes")
        self._spool: Any = tempfile.TemporaryFile()  # noqa: SIM115 - closed by commit/abort
        self._size = 0

    def write(self, data: bytes) -> None:
        if self._spool is None:
            raise ArkerError(ErrorCode.CONFLICT, "the writer was committed or aborted")
        self._size += len(data)
        if isinstance(self._max, int) and self._size > self._max:
            self.abort()
            raise ArkerError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"{self._args.get('path')} is larger than {self._max}"
            )
        self._spool.write(data)

    def commit(self) -> FileInfo:
        spool = self._spool
        if spool is None:
            raise ArkerError(ErrorCode.CONFLICT, "the writer was committed or aborted")
        spool.seek(0)

        def chunks() -> Iterator[bytes]:
            while chunk := spool.read(CHUNK):
                yield chunk

        try:
            headers = self._t.headers(self._args)
            request = self._t.http.build_request(
                "POST", f"/engine/{self._method}", headers=headers, content=chunks()
            )
            response = self._t.send(request)
        finally:
            self.abort()
        info: FileInfo = from_wire(response.json()["result"], COMMIT_RESULT)
        return info

    def abort(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()


def _socket_over(conn: ClientConnection) -> socket.socket:
    """A local socket whose peer is the connection in the VM: two threads move
    the bytes between the socket pair and the WebSocket."""
    ours, theirs = socket.socketpair()

    def up() -> None:
        try:
            while data := theirs.recv(CHUNK):
                conn.send(data)
        except (OSError, ConnectionClosed):
            pass
        finally:
            conn.close()

    def down() -> None:
        try:
            for message in conn:
                theirs.sendall(message if isinstance(message, bytes) else message.encode())
        except (OSError, ConnectionClosed):
            pass
        finally:
            with contextlib.suppress(OSError):
                theirs.shutdown(socket.SHUT_WR)

    threading.Thread(target=up, daemon=True, name="remote-port-up").start()
    threading.Thread(target=down, daemon=True, name="remote-port-down").start()
    return ours


class _RemotePty(Pty):
    """A Pty whose master is one end of a socket pair: the other end's bytes go
    to the host's terminal over the WebSocket (binary frames), and its exit
    comes back as the host relay's exit message, handed on as PID 1's "d"."""

    def __init__(self, conn: ClientConnection) -> None:
        master, self._master_peer = socket.socketpair()
        exit_ours, self._exit_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._conn = conn
        master.setblocking(False)
        super().__init__(master.detach(), exit_ours, self._hang_up)
        threading.Thread(target=self._up, daemon=True, name="remote-pty-up").start()
        threading.Thread(target=self._down, daemon=True, name="remote-pty-down").start()

    def resize(self, cols: int, rows: int) -> None:
        check_size(cols, rows)
        with contextlib.suppress(ConnectionClosed):
            self._conn.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def _hang_up(self) -> None:
        self._conn.close()  # the host's relay ends and closes (kills) its terminal

    def _up(self) -> None:
        try:
            while data := self._master_peer.recv(CHUNK):
                self._conn.send(data)
        except (OSError, ConnectionClosed):
            pass

    def _down(self) -> None:
        exit_message = b""  # none: the VM ended the terminal (exit_code None)
        try:
            for message in self._conn:
                if isinstance(message, bytes):
                    self._master_peer.sendall(message)
                    continue
                body = json.loads(message)
                if body.get("type") == "exit" and body.get("exit_code") is not None:
                    exit_message = b"d" + json.dumps({"exit_code": body["exit_code"]}).encode()
        except (OSError, ConnectionClosed, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                if exit_message:
                    self._exit_peer.send(exit_message)
            self._exit_peer.close()
            with contextlib.suppress(OSError):
                self._master_peer.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        super().close()
        self._master_peer.close()
