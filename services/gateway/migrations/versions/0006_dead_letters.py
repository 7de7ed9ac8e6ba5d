"""Each job records whether it was dead-lettered (given up on after its last attempt), when, and after how
many attempts, so an operator can list dead letters from the database (`stillpoint jobs dead-letters`).

Jobs dead-lettered before this revision are not marked: the Redis stream `stillpoint:jobs:dead` still has
them.

Revision ID: gateway_0006
Revises: gateway_0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gateway_0006"
down_revision = "gateway_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds meditation_jobs.dead_letter_time and dead_letter_attempts, and the index the listing reads."""
    with op.batch_alter_table("meditation_jobs") as table:
        table.add_column(sa.Column("dead_letter_time", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("dead_letter_attempts", sa.Integer(), nullable=True))
    op.create_index("ix_meditation_jobs_dead_letter_time", "meditation_jobs", ["dead_letter_time"])


def downgrade() -> None:
    """Drops the dead-letter columns and their index."""
    op.drop_index("ix_meditation_jobs_dead_letter_time", table_name="meditation_jobs")
    with op.batch_alter_table("meditation_jobs") as table:
        table.drop_column("dead_letter_attempts")
        table.drop_column("dead_letter_time")
