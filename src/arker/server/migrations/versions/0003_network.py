"""Networking: a VM's network policy (JSON), null for VMs made before it
(they had loopback only, and keep it).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as t:
        t.add_column(sa.Column("network", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as t:
        t.drop_column("network")
