"""Lifecycle: a VM's TTL (expires_at), its idle stop (idle_stop_s, and
active_at: the last activity a server wrote down) and its labels (JSON);
null for VMs made before, which keep living as they did.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as t:
        t.add_column(sa.Column("expires_at", sa.Float, nullable=True))
        t.add_column(sa.Column("idle_stop_s", sa.Integer, nullable=True))
        t.add_column(sa.Column("active_at", sa.Float, nullable=True))
        t.add_column(sa.Column("labels", sa.JSON, nullable=True))
        t.create_index("ix_vms_expires", ["expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("vms") as t:
        t.drop_index("ix_vms_expires")
        t.drop_column("labels")
        t.drop_column("active_at")
        t.drop_column("idle_stop_s")
        t.drop_column("expires_at")
