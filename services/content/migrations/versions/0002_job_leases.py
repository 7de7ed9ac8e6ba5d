"""Leases on meditation jobs, so a job outlives the gateway that ran it: another replica (or the same one
after a restart) claims an unfinished job whose lease lapsed and carries it on.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds the owner and lease columns and the index the janitor's query uses."""
    with op.batch_alter_table("meditations") as table:
        table.add_column(sa.Column("owner", sa.String(64), nullable=True))
        table.add_column(sa.Column("lease_expires_time", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_meditations_state_lease", "meditations", ["state", "lease_expires_time"])


def downgrade() -> None:
    """Removes the lease columns."""
    op.drop_index("ix_meditations_state_lease", table_name="meditations")
    with op.batch_alter_table("meditations") as table:
        table.drop_column("lease_expires_time")
        table.drop_column("owner")
