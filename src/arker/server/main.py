"""`serve(...)`: run the API on uvicorn over an engine."""

from __future__ import annotations

import importlib
import os

import uvicorn

from arker.engine.base import Engine
from arker.server.app import build_app
from arker.server.config import Settings
from arker.server.logs import setup_logging

__all__ = ["load_engine", "serve"]

# Seconds uvicorn waits for in-flight requests on SIGTERM before the lifespan
# shutdown stops the engine (a foreground run may last hours; it is recovered).
GRACEFUL_SHUTDOWN_S = 5


def load_engine(data_dir: str, spec: str | None = None, *, pool_reserve_mib: int = 0) -> Engine:
    """The namespace engine by default; `module:Class` (env ARKER_ENGINE) picks
    another kind, called with the data directory."""
    spec = spec or os.environ.get("ARKER_ENGINE")
    if not spec:
        from arker.engine.host import NamespaceEngine

        return NamespaceEngine(data_dir, pool_reserve_bytes=pool_reserve_mib * 2**20)
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
) -> None:
    """Serve until SIGTERM/SIGINT; the lifespan shutdown closes the engine."""
    setup_logging(log_level)
    os.makedirs(settings.data_dir, exist_ok=True)
    app = build_app(
        settings,
        engine or load_engine(settings.data_dir, pool_reserve_mib=settings.pool_reserve_mib),
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
    uvicorn.Server(config).run()
