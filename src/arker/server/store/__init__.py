"""Persistent state: SQLAlchemy models, the async database, migrations."""

from arker.server.store.db import Database
from arker.server.store.models import ApiKey, Base, Run, Upload, Vm

__all__ = ["ApiKey", "Base", "Database", "Run", "Upload", "Vm"]
