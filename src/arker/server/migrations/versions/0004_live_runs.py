"""Live runs: the bytes each stream carried in all, so a stored run's output
maps to stream offsets (its head and its tail when it was truncated); null
for runs from before.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as t:
        t.add_column(sa.Column("stdout_bytes", sa.BigInteger, nullable=True))
        t.add_column(sa.Column("stderr_bytes", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as t:
        t.drop_column("stderr_bytes")
        t.drop_column("stdout_bytes")
