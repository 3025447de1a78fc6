"""Cluster: host agents with their leases (cluster_hosts), where each VM
lives (vm_placements), API replicas by their leases (cluster_replicas) and
which replica drives each run (runs.driver). Empty, and unused, outside a
cluster.

Revision ID: 0008_cluster
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_cluster"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_hosts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(1024), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("lease_expires_at", sa.Float, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
        sa.Column("capacity", sa.JSON, nullable=True),
        sa.Column("goldens", sa.JSON, nullable=True),
    )
    op.create_table(
        "vm_placements",
        sa.Column("vm_id", sa.String(64), primary_key=True),
        sa.Column("host_id", sa.String(64), nullable=False),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("placed_at", sa.Float, nullable=False),
        sa.Column("taking_over", sa.String(64), nullable=True),
    )
    op.create_index("ix_vm_placements_host", "vm_placements", ["host_id"])
    op.create_table(
        "cluster_replicas",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("lease_expires_at", sa.Float, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("driver", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("driver")
    op.drop_table("cluster_replicas")
    op.drop_index("ix_vm_placements_host", "vm_placements")
    op.drop_table("vm_placements")
    op.drop_table("cluster_hosts")
