"""Sizes: a VM's CPUs, memory limit and process limit, as its fork asked or
inherited. Rows from before hold NULL: the engine's defaults.

Revision ID: 0009
Revises: 0008_cluster
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as t:
        t.add_column(sa.Column("cpu", sa.Float, nullable=True))
        t.add_column(sa.Column("memory_mib", sa.Integer, nullable=True))
        t.add_column(sa.Column("pids", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as t:
        t.drop_column("pids")
        t.drop_column("memory_mib")
        t.drop_column("cpu")
