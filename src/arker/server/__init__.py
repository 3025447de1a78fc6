"""The Arker API server: FastAPI routes -> service (rules) -> engine (host)."""

from arker.server.app import build_app, create_app
from arker.server.config import Settings
from arker.server.main import serve

__all__ = ["Settings", "build_app", "create_app", "serve"]
