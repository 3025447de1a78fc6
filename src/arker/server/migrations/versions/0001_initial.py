"""Keys, VMs, runs and uploads.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("org", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "vms",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("org", sa.String(255), nullable=False),
        sa.Column("name", sa.String(63), nullable=True),
        sa.Column("base_image", sa.String(128), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=True),
        sa.Column("durable", sa.Boolean, nullable=False),
        sa.Column("lost", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("deleted_at", sa.Float, nullable=True),
        sa.Column("idem_key", sa.String(255), nullable=True),
        sa.Column("idem_hash", sa.String(64), nullable=True),
        sa.UniqueConstraint("org", "idem_key", name="uq_vms_org_idem_key"),
    )
    op.create_index("ix_vms_org_created", "vms", ["org", "deleted_at", "created_at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("vm_id", sa.String(64), nullable=False),
        sa.Column("org", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("background", sa.Boolean, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("idem_key", sa.String(255), nullable=True),
        sa.Column("timeout_s", sa.Float, nullable=True),
        sa.Column("checkpoint_id", sa.String(64), nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("stdout", sa.LargeBinary, nullable=False),
        sa.Column("stderr", sa.LargeBinary, nullable=False),
        sa.Column("stdout_truncated", sa.Boolean, nullable=False),
        sa.Column("stderr_truncated", sa.Boolean, nullable=False),
        sa.Column("oom_killed", sa.Boolean, nullable=False),
        sa.Column("retry_count", sa.Integer, nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=True),
        sa.UniqueConstraint("org", "idem_key", name="uq_runs_org_idem_key"),
    )
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_index("ix_runs_vm", "runs", ["vm_id"])
    op.create_table(
        "uploads",
        sa.Column("org", sa.String(255), primary_key=True),
        sa.Column("upload_id", sa.String(255), primary_key=True),
        sa.Column("vm_id", sa.String(64), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("uploads")
    op.drop_table("runs")
    op.drop_table("vms")
    op.drop_table("api_keys")
