"""Containment: admin keys, a VM's disk quota, a run's warnings, and an index
for the retention sweep of ended runs.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a column's constraints in place.
    with op.batch_alter_table("api_keys") as t:
        t.add_column(sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("vms") as t:
        t.add_column(sa.Column("disk_mib", sa.Integer, nullable=True))
    with op.batch_alter_table("runs") as t:
        t.add_column(sa.Column("warnings", sa.Text, nullable=True))
    op.create_index("ix_runs_finished", "runs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_finished", "runs")
    with op.batch_alter_table("runs") as t:
        t.drop_column("warnings")
    with op.batch_alter_table("vms") as t:
        t.drop_column("disk_mib")
    with op.batch_alter_table("api_keys") as t:
        t.drop_column("admin")
