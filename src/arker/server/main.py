"""`serve(...)`: run the API on uvicorn over an engine."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
from collections.abc import Iterator
from types import FrameType

import uvicorn

from arker.engine.base import Engine
from arker.server.address import clear_address, write_address
from arker.server.app import build_app, build_metrics_app
from arker.server.config import Settings
from arker.server.logs import setup_logging
from arker.server.service import Service

__all__ = ["load_engine", "serve"]

log = logging.getLogger("arker.server")

# Seconds uvicorn waits for in-flight requests on SIGTERM before the lifespan
# shutdown stops the engine (a foreground run may last hours; it is recovered).
GRACEFUL_SHUTDOWN_S = 5


def load_engine(
    data_dir: str,
    spec: str | None = None,
    *,
    pool_reserve_mib: int = 0,
    user_namespaces: bool = True,
) -> Engine:
    """The namespace engine by default; `module:Class` (env ARKER_ENGINE) picks
    another kind, called with the data directory."""
    spec = spec or os.environ.get("ARKER_ENGINE")
    if not spec:
        from arker.engine.host import NamespaceEngine

        return NamespaceEngine(
            data_dir,
            pool_reserve_bytes=pool_reserve_mib * 2**20,
            user_namespaces=user_namespaces,
        )
    module_name, _, cls_name = spec.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    engine: Engine = cls(data_dir)
    return engine


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8740,
    engine: Engine | None = None,
    log_level: str = "info",
    metrics_listen: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; the lifespan shutdown closes the engine.
    With `metrics_listen` ("HOST:PORT"), /metrics is also served there with no
    key, by a second listener in this process that stops with the first."""
    setup_logging(log_level)
    # Bound before anything starts: a taken address fails here, not after
    # the engine has opened.
    metrics_sock = _bind(metrics_listen) if metrics_listen else None
    os.makedirs(settings.data_dir, exist_ok=True)
    if engine is None and settings.cluster:
        from arker.cluster.router import ClusterEngine

        engine = ClusterEngine(  # type: ignore[abstract]
            settings.host_token or "", blob_store=settings.blob_url is not None
        )
    app = build_app(
        settings,
        engine
        or load_engine(
            settings.data_dir,
            pool_reserve_mib=settings.pool_reserve_mib,
            user_namespaces=settings.user_namespaces,
        ),
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    server = _Server(config, app.state.service)  # type: ignore[attr-defined]
    if not settings.cluster:  # a replica holds no pool: `arker goldens` acts on none
        write_address(settings.data_dir, host, port, settings.api_prefix)
    try:
        _run(server, config, app.state.service, metrics_sock, metrics_listen)  # type: ignore[attr-defined]
    finally:
        clear_address(settings.data_dir)


def _run(
    server: uvicorn.Server,
    config: uvicorn.Config,
    service: Service,
    metrics_sock: socket.socket | None,
    metrics_listen: str | None,
) -> None:
    if metrics_sock is None:
        server.run()
        return
    side = _Follower(
        uvicorn.Config(
            build_metrics_app(service),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            server_header=False,
        ),
        leader=server,
    )
    log.info("serving /metrics with no key on http://%s", metrics_listen)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve_both(server, side, metrics_sock))


async def _serve_both(server: uvicorn.Server, side: uvicorn.Server, sock: socket.socket) -> None:
    # uvicorn's serve() is capture_signals() around _serve(): capture once, for
    # both, so a SIGTERM stops both before it is re-raised.
    with server.capture_signals():
        await asyncio.gather(server._serve(), side._serve(sockets=[sock]))


class _Server(uvicorn.Server):
    """uvicorn's, ending the service's streams as soon as it is told to stop:
    it waits for open connections before the lifespan shutdown, and a run's
    event stream would hold it for the whole grace period."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._service.runs.wakeups.close_soon()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a SIGTERM it caught once this block is left, which
        # ends the process before any `finally` outside: clean up in here.
        with super().capture_signals():
            try:
                yield
            finally:
                clear_address(self._service.settings.data_dir)


class _Follower(uvicorn.Server):
    """A listener that stops when its leader is told to."""

    def __init__(self, config: uvicorn.Config, leader: uvicorn.Server) -> None:
        super().__init__(config)
        self._leader = leader

    async def on_tick(self, counter: int) -> bool:
        return self._leader.should_exit or await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the leader's


def _bind(address: str) -> socket.socket:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"--metrics-listen must be HOST:PORT, not {address!r}")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"--metrics-listen {address}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock
