"""A stand-in for an app listening inside a VM, for the port relay's route
tests: a real HTTP/1.1 + WebSocket server (uvicorn, in a thread, on a free
127.0.0.1 port), and a way to serve the Arker app itself on a real socket.

    GET|POST|... /echo...   JSON: method, target, headers, body size and sha256
                            (the body is hashed as it streams in, never kept)
    GET /big?n=N            N bytes of "x", streamed in 64 KiB pieces
    GET /status/N           status N, text body
    WebSocket (any path)    echoes every message; accepts the first subprotocol
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import parse_qs

import uvicorn

__all__ = ["backend", "serve_app"]

PIECE = 64 * 1024


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        protocols = scope.get("subprotocols") or []
        await send({"type": "websocket.accept", "subprotocol": protocols[0] if protocols else None})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({**message, "type": "websocket.send"})
    path: str = scope["path"]
    if path.startswith("/big"):
        n = int(parse_qs(scope["query_string"].decode())["n"][0])
        headers = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, n, PIECE):
            chunk = b"x" * min(PIECE, n - start)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"from the app"})
        return
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        if not message.get("more_body"):
            break
    raw = scope.get("raw_path") or path.encode()
    target = raw.decode() + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
    doc = {
        "method": scope["method"],
        "target": target,
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        "size": size,
        "sha256": digest.hexdigest(),
    }
    data = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"set-cookie", b"app=1; Path=/")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", ws="websockets-sansio"
    )
    return uvicorn.Server(config)


@contextmanager
def backend() -> Iterator[tuple[str, int]]:
    """The app above on a free port, in a thread of its own; stopped on exit."""
    sock = _listener()
    server = _server(_app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.01)
    try:
        host, port = sock.getsockname()
        yield host, port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """The Arker app (its lifespan already started) on a real socket in this
    event loop, for WebSocket clients; yields its base URL."""
    sock = _listener()
    server = _server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
