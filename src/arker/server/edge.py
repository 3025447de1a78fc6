"""The ASGI layer in front of the routes: API prefix, request ids, body limits,
one JSON log line and metrics per request. Pure ASGI, not BaseHTTPMiddleware,
because it sits on every hot path."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from arker.errors import ArkerError, ErrorCode
from arker.server.config import Settings
from arker.server.metrics import Metrics
from arker.server.port_access import PREVIEW_PATH, preview_target

__all__ = ["Edge", "error_body"]

_PORT_PATH = re.compile(r"/v1/vms/[^/]+/ports/[^/]+/")
_GOLDEN_PATH = re.compile(r"/v1/goldens/[^/]+")
NO_LIMIT = 2**62

access_log = logging.getLogger("arker.access")
log = logging.getLogger("arker.server")


def error_body(code: ErrorCode, message: str) -> bytes:
    return json.dumps({"error": {"code": code.value, "message": message}}).encode()


class Edge:
    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.prefix = settings.api_prefix.rstrip("/")
        self.max_json = settings.max_json_bytes
        self.max_file = settings.max_file_bytes
        self.metrics = metrics
        self.preview_domain = settings.preview_domain
        self.burst_suffix = settings.burst_suffix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        scope = self._route(scope)
        request_id = "req_" + os.urandom(10).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)  # a port's relay; its refusals carry the id
            return
        rid_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        if _golden_import(scope):
            limit = NO_LIMIT  # bounded by the free space, as it is spooled (goldens.py)
        else:
            limit = self.max_file if _large_body(scope) else self.max_json
        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await _send_error(
                    send_with_id,
                    413,
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"the request body is over the limit of {limit} bytes",
                )
            else:
                await self.app(scope, _counting(receive, limit), send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if not response_started:
                await _send_error(send_with_id, 500, ErrorCode.INTERNAL, "internal error")
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.inc(route=template, method=scope["method"], status=str(status))
            self.metrics.latency.observe(elapsed, route=template)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": path,
                            "route": template,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                            "org": scope["state"].get("org"),
                        }
                    },
                )

    def _route(self, scope: Scope) -> Scope:
        """A preview host's request goes to the port relay, its path the app's
        own (no API prefix is taken off it); else the API prefix comes off."""
        path: str = scope["path"]
        if self.preview_domain:
            host = next((v for n, v in scope["headers"] if n == b"host"), b"")
            found = preview_target(host.decode("latin-1"), self.preview_domain, self.burst_suffix)
            if found is not None:
                scope = {k: v for k, v in scope.items() if k != "raw_path"}
                scope["path"] = PREVIEW_PATH + path
                scope.setdefault("state", {})["preview"] = found
                return scope
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            scope = {k: v for k, v in scope.items() if k != "raw_path"}
            scope["path"] = path[len(self.prefix) :] or "/"
            scope.setdefault("state", {})["api_prefix"] = self.prefix
        return scope


def _golden_import(scope: Scope) -> bool:
    return scope["method"] == "PUT" and _GOLDEN_PATH.fullmatch(scope["path"]) is not None


def _large_body(scope: Scope) -> bool:
    """File uploads and relayed requests may carry up to --max-file-bytes;
    everything else is JSON."""
    path: str = scope["path"]
    if scope["method"] == "PUT" and (path.endswith("/files") or path.endswith("/archive")):
        return True
    return path.startswith(PREVIEW_PATH + "/") or _PORT_PATH.match(path) is not None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _counting(receive: Receive, limit: int) -> Receive:
    """Count streamed body bytes (chunked uploads declare no length)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ArkerError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"the request body is over the limit of {limit} bytes",
                )
        return message

    return wrapped


async def _send_error(send: Send, status: int, code: ErrorCode, message: str) -> None:
    body = error_body(code, message)
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
