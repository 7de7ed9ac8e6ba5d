"""Each job records what its assets take in storage, so an owner's total can be held to a limit.

Jobs from before this revision count 0 bytes.

Revision ID: gateway_0005
Revises: gateway_0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gateway_0005"
down_revision = "gateway_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds meditation_jobs.stored_bytes."""
    with op.batch_alter_table("meditation_jobs") as table:
        table.add_column(sa.Column("stored_bytes", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    """Drops meditation_jobs.stored_bytes."""
    with op.batch_alter_table("meditation_jobs") as table:
        table.drop_column("stored_bytes")
