"""The ASGI app: routes, the contract's error shape for every failure
(including the framework's own), and the start/stop of database and engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from arker.engine.base import Engine
from arker.errors import ArkerError, ErrorCode
from arker.server.auth import Authenticator
from arker.server.config import Settings
from arker.server.edge import Edge
from arker.server.metrics import Metrics
from arker.server.ports import router as ports_router
from arker.server.pty import router as pty_router
from arker.server.routes import metrics_response, router
from arker.server.service import Service
from arker.server.store import Database

if TYPE_CHECKING:
    from arker.client import AsyncArker
    from arker.mcp.http import McpHttp

__all__ = ["build_app", "build_metrics_app", "create_app"]

log = logging.getLogger("arker.server")

CODE_BY_STATUS = {
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


QUOTA_RETRY_AFTER_S = 60


def _error(
    status: int, code: ErrorCode | str, message: str, details: dict[str, Any] | None = None
) -> Response:
    body: dict[str, Any] = {"code": str(code), "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


async def _arker_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ArkerError)
    if exc.code is ErrorCode.INSUFFICIENT_STORAGE:
        log.warning("request refused: %s", exc)  # a full quota or pool, not a server bug
    elif exc.status == 502:
        pass  # a VM's app not listening or not answering: the access log has it
    elif exc.status >= 500:
        log.error("request failed: %s", exc)
    response = _error(exc.status, exc.code, exc.message, exc.details)
    if exc.code == ErrorCode.QUOTA_EXCEEDED:
        # The contract's 429 carries Retry-After. A quota frees only when VMs
        # are deleted, so this is a hint for a human, not a schedule (the SDK
        # does not retry quota_exceeded).
        response.headers["Retry-After"] = str(QUOTA_RETRY_AFTER_S)
    return response


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return _error(
            400, ErrorCode.INVALID_REQUEST, "the body is not valid JSON", {"errors": errors}
        )
    first = errors[0] if errors else {"loc": [], "msg": "invalid"}
    where = ".".join(first["loc"]) or "request"
    return _error(422, ErrorCode.INVALID_REQUEST, f"{where}: {first['msg']}", {"errors": errors})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, ArkerError):  # e.g. the body limit, hit while FastAPI read JSON
        return await _arker_error(request, exc.__cause__)
    if exc.status_code == 405:
        return _error(
            405, ErrorCode.INVALID_REQUEST, f"{request.url.path} does not accept {request.method}"
        )
    if exc.status_code == 404:
        return _error(404, ErrorCode.NOT_FOUND, f"no such path: {request.url.path}")
    code = CODE_BY_STATUS.get(exc.status_code)
    if code is None:
        code = ErrorCode.INVALID_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL
    return _error(exc.status_code, code, str(exc.detail))


async def _unexpected(_: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer; the edge logs it with the request id.
    return _error(500, ErrorCode.INTERNAL, "internal error")


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """The FastAPI app alone (no edge middleware); see `build_app`."""
    db = Database(settings.db_url)
    metrics = Metrics()
    service = Service(settings, db, engine, metrics)

    auth = Authenticator(db, settings.auth_cache_s)
    mcp = _mcp(auth)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await db.migrate()
        await service.start()
        try:
            async with AsyncExitStack() as stack:
                if settings.cluster:
                    from arker.cluster.replica import replica

                    await stack.enter_async_context(replica(service))
                if mcp is not None:
                    await stack.enter_async_context(mcp.run())
                yield
        finally:
            await service.stop()
            await db.close()

    app = FastAPI(
        title="Arker VM API", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.db = db
    app.state.metrics = metrics
    app.state.service = service
    app.state.auth = auth
    app.state.asgi = app  # what the MCP tools' SDK clients call: build_app makes it the edge
    app.include_router(router)
    app.include_router(ports_router)
    app.include_router(pty_router)
    if mcp is not None:
        mcp_app = mcp
        app.router.routes.append(Route(MCP_PATH, _McpGate(mcp_app, auth)))

        @asynccontextmanager
        async def connect(key: str, base_url: str) -> AsyncIterator[AsyncArker]:
            from arker.client import AsyncArker

            # In-process, through the whole app as served (edge included): the
            # tools use the API as any client does, with the caller's key.
            transport = httpx.ASGITransport(app=app.state.asgi)
            async with httpx.AsyncClient(transport=transport) as http:
                yield AsyncArker(key, base_url=base_url, http_client=http, timeout_s=3600)

        mcp_app.connect = connect
    app.add_exception_handler(ArkerError, _arker_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    return app


MCP_PATH = "/mcp"


def _mcp(auth: Authenticator) -> McpHttp | None:
    """The MCP server over streamable HTTP, if the mcp package is installed."""
    try:
        from arker.mcp.http import McpHttp
    except ImportError:
        log.info("no MCP at %s: the mcp package is not installed", MCP_PATH)
        return None
    return McpHttp()


class _McpGate:
    """/mcp: the caller's key is checked here, as on every route (401 in the
    contract's error shape), then the MCP app gets the request with the base
    URL its SDK clients use (any such header the caller sent is replaced)."""

    def __init__(self, mcp: ASGIApp, auth: Authenticator) -> None:
        self.mcp, self.auth = mcp, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from arker.mcp.http import BASE_URL_HEADER

        headers = Headers(scope=scope)
        state = scope.setdefault("state", {})
        try:
            state["org"] = await self.auth.org_for(headers.get("authorization"))
        except ArkerError as exc:
            await _error(exc.status, exc.code, exc.message)(scope, receive, send)
            return
        host = headers.get("host", "localhost")
        base_url = f"{scope.get('scheme', 'http')}://{host}{state.get('api_prefix', '')}"
        raw = [(k, v) for k, v in scope["headers"] if k.decode("latin-1") != BASE_URL_HEADER]
        raw.append((BASE_URL_HEADER.encode(), base_url.encode("latin-1")))
        await self.mcp({**scope, "headers": raw}, receive, send)


def build_app(settings: Settings, engine: Engine) -> Edge:
    """The whole ASGI app as served: edge (prefix, ids, limits, logs) + routes."""
    app = create_app(settings, engine)
    edge = Edge(app, settings, app.state.metrics)
    edge.state = app.state  # type: ignore[attr-defined]
    app.state.asgi = edge
    return edge


def build_metrics_app(service: Service) -> Starlette:
    """The app of `arker serve --metrics-listen`: GET /metrics with no key, for
    a scraper on an address the world cannot reach; nothing else is served."""

    async def metrics(_: Request) -> Response:
        return await metrics_response(service)

    async def not_found(request: Request, _: Exception) -> Response:
        return _error(404, ErrorCode.NOT_FOUND, f"no such path: {request.url.path}")

    async def not_allowed(request: Request, _: Exception) -> Response:
        return _error(
            405, ErrorCode.INVALID_REQUEST, f"{request.url.path} does not accept {request.method}"
        )

    return Starlette(
        routes=[Route("/metrics", metrics, methods=["GET"])],
        exception_handlers={404: not_found, 405: not_allowed},
    )
