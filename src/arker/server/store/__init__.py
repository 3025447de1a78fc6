"""Persistent state: SQLAlchemy models, the async database, migrations."""

from arker.server.store.db import Database
from arker.server.store.models import (
    ApiKey,
    Base,
    ClusterHost,
    ClusterReplica,
    Golden,
    Operation,
    Placement,
    Run,
    Upload,
    Vm,
)

__all__ = [
    "ApiKey",
    "Base",
    "ClusterHost",
    "ClusterReplica",
    "Database",
    "Golden",
    "Operation",
    "Placement",
    "Run",
    "Upload",
    "Vm",
]
