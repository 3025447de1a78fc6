"""Alembic environment: the server hands over an open connection
(`config.attributes["connection"]`), so migrations run in-process on start."""

from __future__ import annotations

from alembic import context

from arker.server.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("arker runs its migrations in-process; use Database.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
