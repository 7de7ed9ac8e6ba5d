"""Each finished job records when the deletion of its stored assets became owed and has not yet been done,
so a deletion that storage or media refused (an outage) is retried by a janitor once they answer, and a FAILED
or cancelled job leaves no orphaned object behind.

Revision ID: gateway_0008
Revises: gateway_0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gateway_0008"
down_revision = "gateway_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds meditation_jobs.asset_deletion_owed_time and the index the janitor reads."""
    with op.batch_alter_table("meditation_jobs") as table:
        table.add_column(sa.Column("asset_deletion_owed_time", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_meditation_jobs_asset_deletion_owed_time", "meditation_jobs", ["asset_deletion_owed_time"]
    )


def downgrade() -> None:
    """Drops meditation_jobs.asset_deletion_owed_time and its index."""
    op.drop_index("ix_meditation_jobs_asset_deletion_owed_time", table_name="meditation_jobs")
    with op.batch_alter_table("meditation_jobs") as table:
        table.drop_column("asset_deletion_owed_time")
