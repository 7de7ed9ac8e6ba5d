"""Each running job records when a cancellation was asked for it, so the replica running it hears of it from
the database too: the broadcast on Redis pub/sub is lost while Redis is down, and the lease heartbeat reads
this column anyway.

Revision ID: gateway_0007
Revises: gateway_0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gateway_0007"
down_revision = "gateway_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds meditation_jobs.cancel_requested_time."""
    with op.batch_alter_table("meditation_jobs") as table:
        table.add_column(sa.Column("cancel_requested_time", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drops meditation_jobs.cancel_requested_time."""
    with op.batch_alter_table("meditation_jobs") as table:
        table.drop_column("cancel_requested_time")
